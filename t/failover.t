#!/usr/bin/perl
# Failover between the providers of a route: a provider that errs, times out
# or cannot be reached is replaced by the next one before the client sees a
# byte; fallbacks come last; the retry policy decides what is retried.

use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use LLMTest;

my $t = LLMTest->new;

$t->run(<<'CONF');
http {
    log_format llm '$http_x_test_id|$llm_provider|$llm_attempts|$llm_failover|$status|$llm_usage_source';

    # the mock answers every request of these with the fault in their header
    llm_provider bad     { url http://127.0.0.1:%%PORT_MOCK%%/v1; key k; model gpt-4o-mini;
                           header X-Mock-Status 503; }
    llm_provider limited { url http://127.0.0.1:%%PORT_MOCK%%/v1; key k; model gpt-4o-mini;
                           header X-Mock-Status 429; }
    llm_provider invalid { url http://127.0.0.1:%%PORT_MOCK%%/v1; key k; model gpt-4o-mini;
                           header X-Mock-Status 400; }
    llm_provider slow    { url http://127.0.0.1:%%PORT_MOCK%%/v1; key k; model gpt-4o-mini;
                           read_timeout 1s; header X-Mock-Delay 3000; }
    llm_provider dead    { url http://127.0.0.1:%%PORT_CLOSED%%/v1; key k; model gpt-4o-mini; }
    llm_provider good    { url http://127.0.0.1:%%PORT_MOCK%%/v1; key k;
                           model gpt-4o-mini good-model; model other; }

    llm_provider good2   { url http://127.0.0.1:%%PORT_MOCK%%/v1; key k; }

    llm_route split    { provider bad weight=1; provider good weight=1; }
    llm_route sticky   { provider good; provider good2; sticky $http_x_user; }
    llm_route weighted { provider good weight=3; provider good2 weight=1; }
    llm_route stickbad { provider bad; provider good2; sticky $http_x_user; }
    llm_route refused  { provider dead weight=5; provider good; }
    llm_route timeout  { provider slow weight=5; provider good; }
    llm_route fallback { provider bad; fallback good; }
    llm_route noretry  { provider bad; fallback good; retry off; }
    llm_route alldown  { provider bad; provider limited; }
    llm_route deadall  { provider dead; }
    llm_route ratelim  { provider limited weight=5; provider good; }
    llm_route client   { provider invalid weight=5; provider good; }
    llm_route only429  { provider bad weight=5; provider good; retry 429; }
    llm_route onetry   { provider bad weight=5; provider good; retry error timeout 503 tries=1; }

    server {
        listen 127.0.0.1:%%PORT_MOCK%%;
        location /v1/ { llm_mock; }
    }

    server {
        listen 127.0.0.1:%%PORT_GW%%;
        access_log %%DIR%%/gw.log llm;
        llm_attempts_header on;

        location /split/v1/    { llm_pass split; }
        location /refused/v1/  { llm_pass refused; }
        location /timeout/v1/  { llm_pass timeout; }
        location /fallback/v1/ { llm_pass fallback; }
        location /noretry/v1/  { llm_pass noretry; }
        location /alldown/v1/  { llm_pass alldown; }
        location /deadall/v1/  { llm_pass deadall; }
        location /ratelim/v1/  { llm_pass ratelim; }
        location /client/v1/   { llm_pass client; }
        location /only429/v1/  { llm_pass only429; }
        location /onetry/v1/   { llm_pass onetry; }
        location /sticky/v1/   { llm_pass sticky; }
        location /weighted/v1/ { llm_pass weighted; }
        location /stickbad/v1/ { llm_pass stickbad; }
    }
}
CONF

my $gw   = $t->port('GW');
my $msgs = [ { role => 'user', content => 'Hello' } ];

sub chat {
    my ($route, %a) = @_;
    my $model = delete $a{model} // 'gpt-4o-mini';
    my $stream = delete $a{stream};
    return http_request(port => $gw, method => 'POST', path => "/$route/v1/chat/completions",
                        body => { model => $model, messages => $msgs,
                                  ($stream ? (stream => JSON::PP::true) : ()) },
                        timeout => 15, %a);
}

sub log_line {
    my ($id) = @_;
    my $l = wait_for(sub { (grep { /^\Q$id\E\|/ } $t->access_log('gw.log'))[0] }, 5);
    return $l // '';
}

# ---------------------------------------------------------------------------
# one of two providers answers 503 to everything: every request succeeds

{
    my ($ok, $failed_over) = (0, 0);

    for my $i (1 .. 20) {
        my $r = chat('split', headers => [ 'X-Test-Id' => "split-$i" ]);
        $ok++ if $r->{status} == 200;

        my $j = json_decode($r->{body}) // {};
        my $a = $r->{headers}{'x-llm-attempts'} // '';

        if ($a eq 'bad:503,good:200') {
            $failed_over++;
            is($j->{model}, 'good-model', "split-$i: the request was rebuilt for the provider that answered")
                if $failed_over == 1;
        }
    }

    is($ok, 20, 'one provider of two answers 503: 20 of 20 requests succeed');
    cmp_ok($failed_over, '>=', 5, "requests that went to the failing provider first failed over ($failed_over)");

    my @lines;
    wait_for(sub { @lines = grep { /^split-/ } $t->access_log('gw.log'); @lines >= 20 }, 5);
    is(scalar(grep { /\|good\|2\|bad:503,good:200\|200\|provider$/ } @lines), $failed_over,
       'the log has $llm_attempts 2 and $llm_failover bad:503,good:200 for them, with the usage of the answer');
    is(scalar(grep { /\|good\|1\|good:200\|200\|provider$/ } @lines), 20 - $failed_over,
       'the others went to the good provider at once');
}

# connection refused, then the next provider
{
    my $r = chat('refused', headers => [ 'X-Test-Id' => 'refused' ]);
    is($r->{status}, 200, 'a provider that refuses connections: the next one answers');
    like(log_line('refused'), qr/^refused\|good\|2\|dead:error,good:200\|200\|/,
         'refused: $llm_failover dead:error,good:200');
}

# a provider that times out, then the next one
{
    my $r = chat('timeout', headers => [ 'X-Test-Id' => 'timeout' ]);
    is($r->{status}, 200, 'a provider that times out: the next one answers');
    like(log_line('timeout'), qr/^timeout\|good\|2\|slow:timeout,good:200\|200\|/,
         'timeout: $llm_failover slow:timeout,good:200');
}

# fallbacks come after the weighted providers
{
    my $r = chat('fallback', headers => [ 'X-Test-Id' => 'fallback' ]);
    is($r->{status}, 200, 'the fallback answers when the provider fails');
    is($r->{headers}{'x-llm-attempts'}, 'bad:503,good:200', 'the fallback was tried after the provider');
}

# a stream fails over before anything reaches the client
{
    my $r = chat('fallback', stream => 1, headers => [ 'X-Test-Id' => 'stream' ]);
    is($r->{status}, 200, 'a stream fails over too');
    like($r->{body}, qr/This is a mock.*data: \[DONE\]/s, 'the client gets the whole stream of the fallback');
    unlike($r->{body}, qr/Mock fault/, 'and nothing of the failed attempt');
}

# retry off: the provider's error goes to the client
{
    my $r = chat('noretry', headers => [ 'X-Test-Id' => 'noretry' ]);
    is($r->{status}, 503, 'retry off: the provider\'s 503 is the answer');
    like(log_line('noretry'), qr/^noretry\|bad\|1\|bad:503\|503\|none$/, 'retry off: one attempt');
}

# every provider fails: the last answer, or a gateway error
{
    my $r = chat('alldown', headers => [ 'X-Test-Id' => 'alldown' ]);
    ok($r->{status} == 503 || $r->{status} == 429, "every provider errs: the last provider's error ($r->{status})");
    like($r->{headers}{'x-llm-attempts'} // '', qr/^(bad:503,limited:429|limited:429,bad:503)$/,
         'every provider errs: both were tried');

    $r = chat('deadall', headers => [ 'X-Test-Id' => 'deadall' ]);
    error_ok($r, 502, 'provider_unavailable', 'the only provider cannot be reached: 502 JSON');
}

# what is retried
{
    my $r = chat('ratelim', headers => [ 'X-Test-Id' => 'ratelim' ]);
    is($r->{status}, 200, '429 is retried by default');
    like(log_line('ratelim'), qr/\|limited:429,good:200\|/, '429: limited:429,good:200');

    $r = chat('client', headers => [ 'X-Test-Id' => 'client' ]);
    is($r->{status}, 400, 'a 400 of the provider is not retried: the request is at fault');
    like(log_line('client'), qr/^client\|invalid\|1\|invalid:400\|400\|/, '400: one attempt');

    $r = chat('only429', headers => [ 'X-Test-Id' => 'only429' ]);
    is($r->{status}, 503, 'retry 429: a 503 is not retried');

    $r = chat('onetry', headers => [ 'X-Test-Id' => 'onetry' ]);
    is($r->{status}, 503, 'tries=1: no second attempt');
    like(log_line('onetry'), qr/^onetry\|bad\|1\|bad:503\|/, 'tries=1: one attempt logged');
}

# a model only one provider serves goes only there
{
    my $r = chat('split', model => 'other', headers => [ 'X-Test-Id' => 'other' ]);
    is($r->{status}, 200, 'a model of the good provider only');
    like(log_line('other'), qr/^other\|good\|1\|good:200\|/, 'it is not sent to the provider that lacks it');
}

# sticky: a key keeps its provider; keys spread over the providers
{
    my %seen;
    for my $i (1 .. 6) {
        my $r = chat('sticky', headers => [ 'X-User' => 'alice', 'X-Test-Id' => "alice-$i" ]);
        my ($p) = (log_line("alice-$i") =~ /^alice-\d\|(\w+)\|/);
        $seen{$p // '?'}++;
    }
    is(scalar(keys %seen), 1, 'sticky: one key, one provider (' . join(',', keys %seen) . ')');

    my %by;
    for my $u (1 .. 20) {
        chat('sticky', headers => [ 'X-User' => "user$u", 'X-Test-Id' => "user-$u" ]);
        my ($p) = (log_line("user-$u") =~ /^user-\d+\|(\w+)\|/);
        $by{$p // '?'}++;
    }
    is(scalar(grep { $_ ne '?' } keys %by), 2, 'sticky: 20 keys use both providers');

    # a key whose provider fails goes to the other one, and still succeeds
    my $r;
    my $moved = 0;
    for my $u (1 .. 10) {
        $r = chat('stickbad', headers => [ 'X-User' => "user$u", 'X-Test-Id' => "sb-$u" ]);
        $moved++ if $r->{status} == 200;
    }
    is($moved, 10, 'sticky: keys of a failing provider fail over');
}

# the weighted split over 2,000 requests: 3 to 1 within a chi-square bound
{
    my %n;
    for my $i (1 .. 2000) {
        my $r = http_request(port => $gw, method => 'POST', path => '/weighted/v1/chat/completions',
                             body => { model => 'gpt-4o-mini', messages => $msgs }, keepalive => 1);
        my $j = json_decode($r->{body}) // {};
        $n{ ($j->{model} // '') eq 'good-model' ? 'good' : 'good2' }++;
    }
    my ($e1, $e2) = (1500, 500);
    my $chi2 = ($n{good} - $e1) ** 2 / $e1 + ($n{good2} - $e2) ** 2 / $e2;
    cmp_ok($chi2, '<', 10.83, "weights 3:1 over 2000 requests: $n{good}:$n{good2}, chi-square $chi2 < 10.83 (p 0.001)");
}

# configuration
{
    my ($rc, $out) = $t->nginx_t(<<'CONF');
http {
    llm_provider a { url http://127.0.0.1:1/v1; }
    llm_route r { provider a; retry error 418; }
    server { listen 127.0.0.1:%%PORT_X%%; location / { llm_pass r; } }
}
CONF
    isnt($rc, 0, 'an unknown retry trigger fails nginx -t');
    like($out, qr/invalid retry trigger "418"/, 'and says which');

    ($rc, $out) = $t->nginx_t(<<'CONF');
http {
    llm_provider a { url http://127.0.0.1:1/v1; }
    llm_route r { provider a; retry error tries=0; }
    server { listen 127.0.0.1:%%PORT_X%%; location / { llm_pass r; } }
}
CONF
    isnt($rc, 0, 'tries=0 fails nginx -t');
}

$t->finish;
done_testing;
