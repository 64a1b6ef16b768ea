#!/usr/bin/perl
# Limits in shared memory (llm_limit_zone, llm_limit), 2 workers: requests,
# tokens and spend per window and requests in flight; reserved before the
# provider is asked, reconciled with the real usage when the request ends;
# never more admitted than the limit, whatever the concurrency; 429 with
# Retry-After and OpenAI's x-ratelimit-* headers; clamp, dry_run; the
# budget back after aborts, errors and timeouts; kept across a reload.

use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use LLMTest;
use LLMTest::Usage qw(status_json parse_log usd_to_pico pico_to_usd);
use Time::HiRes qw(time sleep);
use POSIX qw(ceil);

my $t = LLMTest->new(workers => 2);

# a provider that records the forwarded body and answers with fixed usage
my $fake = $t->fake_provider(port => $t->port('FAKE'), handler => sub {
    my ($req) = @_;
    return [ [ send => LLMTest::FakeProvider::http_response(
        status => 200, headers => [ 'Content-Type' => 'application/json' ],
        body => '{"id":"c","object":"chat.completion","created":1,"model":"m","choices":'
                . '[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],'
                . '"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15}}') ] ];
});

my $CONF = <<'CONF';
http {
    llm_zone llm 1m;
    llm_price m input=1.00 output=100.00;

    log_format llm '$http_x_test|$llm_limit_status|$status|$llm_input_tokens|$llm_output_tokens|$llm_cost|$llm_usage_source';

    llm_limit_zone req:1m     key=$http_x_tenant requests=5/d;
    llm_limit_zone tok:1m     key=$http_x_tenant tokens=10000/d;
    llm_limit_zone spend:1m   key=$http_x_tenant spend=0.01/d;
    llm_limit_zone conc:1m    key=$http_x_tenant concurrent=3;
    llm_limit_zone small:1m   key=$http_x_tenant tokens=300/d;
    llm_limit_zone dry:1m     key=$http_x_tenant requests=1/d;
    llm_limit_zone release:1m key=$http_x_tenant tokens=100000/d concurrent=2;

    llm_provider mock { url http://127.0.0.1:%%PORT_MOCK%%/v1; key k; read_timeout 2s; }
    llm_provider fake { url http://127.0.0.1:%%PORT_FAKE%%/v1; key k; }
    llm_provider down { url http://127.0.0.1:%%PORT_MOCK%%/v1; key k; header X-Mock-Status 500; }
    llm_route failing { provider down; fallback down2; }
    llm_provider down2 { url http://127.0.0.1:%%PORT_MOCK%%/v1; key k; header X-Mock-Status 503; }

    server {
        listen 127.0.0.1:%%PORT_MOCK%%;
        access_log off;
        location /v1/ { llm_mock; }
    }

    server {
        listen 127.0.0.1:%%PORT_GW%%;
        access_log %%DIR%%/gw.log llm;

        location /req/v1/     { llm_pass mock; llm_limit req; }
        location /tok/v1/     { llm_pass mock; llm_limit tok; }
        location /spend/v1/   { llm_pass mock; llm_limit spend; }
        location /conc/v1/    { llm_pass mock; llm_limit conc; }
        location /clamp/v1/   { llm_pass fake; llm_limit small clamp; }
        location /noclamp/v1/ { llm_pass fake; llm_limit small; }
        location /dry/v1/     { llm_pass mock; llm_limit dry dry_run; }
        location /both/v1/    { llm_pass mock; llm_limit req; llm_limit tok; }
        location /release/v1/ { llm_pass mock; llm_limit release; }
        location /fail/v1/    { llm_pass failing; llm_limit release; }
        location = /status    { llm_status; }
    }
}
CONF

$t->run($CONF);

my $gw = $t->port('GW');

sub chat {
    my ($loc, $tenant, %a) = @_;
    my $body = $a{body} // { model => 'm', messages => [ { role => 'user', content => $a{text} // 'Hello' } ],
                             (defined $a{max} ? (max_tokens => $a{max}) : ()),
                             ($a{stream} ? (stream => JSON::PP::true) : ()) };
    return http_request(port => $gw, method => 'POST', path => "/$loc/v1/chat/completions",
                        body => $body, timeout => 20,
                        headers => [ 'X-Tenant' => $tenant, 'X-Test' => $a{test} // "$loc-$tenant",
                                     @{ $a{headers} // [] } ]);
}

sub limits {
    my ($zone, $key) = @_;
    my (undef, $st) = status_json($gw, '/status');
    return (($st // {})->{limits}{$zone}{keys}{$key}) // {};
}

sub log_lines {
    my ($re, $n) = @_;
    my @l;
    wait_for(sub { @l = grep { $_ =~ $re } $t->access_log('gw.log'); @l >= $n }, 10);
    return map { [ split /\|/, $_, -1 ] } @l;
}

# windows are of a UTC day: a test that would cross midnight waits for it
{
    my @now = gmtime;
    my $left = 86400 - ($now[2] * 3600 + $now[1] * 60 + $now[0]);
    sleep $left + 1 if $left < 120;
}

# ---------------------------------------------------------------------------
# requests=5/d: exactly 5 pass, then 429 with Retry-After to the window's end

{
    my @st;
    my @rem;
    for my $i (1 .. 8) {
        my $r = chat('req', 'a');
        push @st, $r->{status};
        push @rem, $r->{headers}{'x-ratelimit-remaining-requests'} // 'none';
        if ($i == 6) {
            error_ok($r, 429, 'rate_limit_exceeded', 'the 6th request: 429 rate_limit_exceeded');
            my @now = gmtime;
            my $to_midnight = 86400 - ($now[2] * 3600 + $now[1] * 60 + $now[0]);
            my $ra = $r->{headers}{'retry-after'} // -1;
            ok(abs($ra - $to_midnight) <= 1, "Retry-After $ra is the seconds to the window's end ($to_midnight)");
            is($r->{headers}{'x-ratelimit-limit-requests'}, 5, '429: x-ratelimit-limit-requests');
            is($r->{headers}{'x-ratelimit-remaining-requests'}, 0, '429: x-ratelimit-remaining-requests 0');
            like($r->{headers}{'x-ratelimit-reset-requests'} // '', qr/^\d+h\d+m\d+s$|^\d+m\d+s$|^\d+s$/,
                 '429: x-ratelimit-reset-requests is a duration');
            like(json_decode($r->{body})->{error}{message}, qr/requests/, 'the message names the limit');
        }
    }
    is("@st", '200 200 200 200 200 429 429 429', 'requests=5: five pass, the rest 429');
    is("@rem", '4 3 2 1 0 0 0 0', 'x-ratelimit-remaining-requests counts down');
    is(chat('req', 'b')->{status}, 200, 'another key has its own count');

    # a request the limit refuses takes no attempt with a provider
    my (undef, $st) = status_json($gw, '/status');
    is_deeply($st->{providers}{mock}{attempts}, { total => 6, failed => 0 },
              'the refused requests made no attempt');

    my @l = log_lines(qr/^req-a\|/, 8);
    is(scalar(grep { $_->[1] eq 'PASSED' } @l), 5, '$llm_limit_status PASSED 5 times');
    is(scalar(grep { $_->[1] eq 'REJECTED_REQUESTS' } @l), 3, '$llm_limit_status REJECTED_REQUESTS 3 times');
    my $k = limits('req', 'a');
    is($k->{requests}{used}, 5, 'status page: 5 requests used');
    is($k->{requests}{left}, 0, 'status page: none left');
    is($k->{rejected}, 3, 'status page: 3 rejected');
}

# ---------------------------------------------------------------------------
# tokens=10000/d, 50 parallel streams: the tokens admitted never exceed the
# limit, at any moment, and what is left after is the limit less the real
# usage of the log, to the token

{
    my $text = 'x' x 1600;                 # ~400 input tokens; 450 reserved
    my $max = 0;
    my @fail = $t->parallel('tok', 50, 10, sub {
        my ($i) = @_;
        my $r = chat('tok', 'p', text => $text, max => 50, stream => 1, test => "tok-$i",
                     headers => [ 'X-Mock-Chunk-Delay' => 30 ]);
        return ($r->{status} == 200 || $r->{status} == 429) ? '' : "status $r->{status}";
    }, sub {
        # meanwhile: reserved + used never above the limit
        my $deadline = time + 30;
        while (time < $deadline && $t->done_count('tok') < 50) {
            my $k = limits('tok', 'p')->{tokens} // {};
            my $taken = ($k->{used} // 0) + ($k->{reserved} // 0);
            $max = $taken if $taken > $max;
            sleep 0.05;
        }
    });
    is(scalar @fail, 0, '50 parallel streams: each a 200 or a 429') or diag("@fail");
    cmp_ok($max, '<=', 10000, "reserved + used never above 10000 while they ran (at most $max)");

    my @l = log_lines(qr/^tok-\d+\|/, 50);
    my @ok = grep { $_->[2] == 200 } @l;
    my @no = grep { $_->[2] == 429 } @l;
    cmp_ok(scalar @no, '>', 0, scalar(@no) . ' of 50 refused');
    cmp_ok(scalar @ok, '>', 0, scalar(@ok) . ' of 50 admitted');
    my $used = 0;
    $used += $_->[3] + $_->[4] for @ok;
    cmp_ok($used, '<=', 10000, "the tokens of the admitted requests ($used) within the limit");

    wait_for(sub { (limits('tok', 'p')->{tokens}{reserved} // 1) == 0 }, 5);
    my $k = limits('tok', 'p')->{tokens} // {};
    is($k->{used}, $used, 'status page: used = the log\'s tokens, to the token');
    is($k->{reserved}, 0, 'status page: nothing reserved once all ended');
    is($k->{left}, 10000 - $used, 'status page: left = limit - used');
    is((grep { $_->[1] eq 'REJECTED_TOKENS' } @l), scalar @no, 'every 429 is REJECTED_TOKENS');

    my $r = chat('tok', 'p', text => 'hi', max => 10);
    is($r->{headers}{'x-ratelimit-limit-tokens'}, 10000, 'x-ratelimit-limit-tokens');
    my $rem = $r->{headers}{'x-ratelimit-remaining-tokens'};
    ok(defined $rem && $rem <= 10000 - $used, "x-ratelimit-remaining-tokens ($rem) after the reservation");
}

# ---------------------------------------------------------------------------
# spend=0.01/d hit by 40 parallel requests: the spend in the log never
# exceeds the budget (the reservation is the dearest price of the output
# allowed; the mock answers 18 tokens)

{
    my @fail = $t->parallel('spend', 40, 10, sub {
        my ($i) = @_;
        my $r = chat('spend', 's', max => 20, stream => $i % 2, test => "spend-$i",
                     headers => [ 'X-Mock-Chunk-Delay' => 20 ]);
        return ($r->{status} == 200 || $r->{status} == 429) ? '' : "status $r->{status}";
    });
    is(scalar @fail, 0, '40 parallel: each a 200 or a 429') or diag("@fail");
    my @l = log_lines(qr/^spend-\d+\|/, 40);
    my $pico = Math::BigInt->new(0);
    $pico += usd_to_pico($_->[5]) for grep { $_->[2] == 200 } @l;
    cmp_ok($pico, '<=', usd_to_pico('0.01'), 'the spend in the log (' . pico_to_usd($pico) . ') within $0.01');
    cmp_ok(scalar(grep { $_->[2] == 429 } @l), '>', 0, 'some were refused');
    wait_for(sub { (limits('spend', 's')->{spend}{reserved} // '') eq '0' }, 5);
    my $k = limits('spend', 's')->{spend} // {};
    is($k->{used}, pico_to_usd($pico), 'status page: the spend used = the log\'s, exactly');
    is($k->{reserved}, '0', 'status page: nothing reserved once all ended');
    is((grep { $_->[1] eq 'REJECTED_SPEND' } @l), (grep { $_->[2] == 429 } @l), 'every 429 is REJECTED_SPEND');
}

# ---------------------------------------------------------------------------
# concurrent=3 with slow streams

{
    my @fail = $t->parallel('conc', 6, 6, sub {
        my ($i) = @_;
        my $r = chat('conc', 'c', stream => 1, test => "conc-$i",
                     headers => [ 'X-Mock-Chunk-Delay' => 300 ]);
        return '' if $r->{status} == 200;
        return '' if $r->{status} == 429 && ($r->{headers}{'retry-after'} // '') eq '1';
        return "status $r->{status}";
    });
    is(scalar @fail, 0, '6 parallel slow streams: 200, or 429 with Retry-After 1') or diag("@fail");
    my @l = log_lines(qr/^conc-\d+\|/, 6);
    is(scalar(grep { $_->[2] == 200 } @l), 3, 'concurrent=3: three streams at once');
    is(scalar(grep { $_->[1] eq 'REJECTED_CONCURRENT' } @l), 3, 'three REJECTED_CONCURRENT');
    wait_for(sub { (limits('conc', 'c')->{in_flight} // 1) == 0 }, 5);
    is(limits('conc', 'c')->{in_flight}, 0, 'none in flight once they ended');
    is(chat('conc', 'c')->{status}, 200, 'then a request passes again');
}

# ---------------------------------------------------------------------------
# clamp: max_tokens lowered to what is left, at the provider, and the
# request succeeds; without clamp it is refused

{
    # tokens=300: a 16-byte body reserves 20 + max_tokens
    $fake->reset_log;
    my $body = '{"model":"m","messages":[{"role":"user","content":"Hi"}],"max_tokens":1000}';
    my $r = chat('clamp', 'k', body => $body);
    is($r->{status}, 200, 'clamp: a request for 1000 tokens with 300 left succeeds');
    my ($req) = $fake->requests;
    my $input = ceil(length($body) / 4);
    is($req && $req->{json}{max_tokens}, 300 - $input, 'clamp: the provider was asked for what is left (' . (300 - $input) . ')');
    my @l = log_lines(qr/^clamp-k\|/, 1);
    is($l[0][1], 'CLAMPED', '$llm_limit_status CLAMPED');

    # the fake's usage (15 tokens) charged: 285 left; without max_tokens,
    # clamp asks for at most what it reserved
    $fake->reset_log;
    $r = chat('clamp', 'k', body => '{"model":"m","messages":[{"role":"user","content":"Hi"}]}');
    is($r->{status}, 200, 'clamp without max_tokens: 200');
    ($req) = $fake->requests;
    ok($req && $req->{json}{max_tokens} && $req->{json}{max_tokens} <= 285 - 14,
       'clamp without max_tokens: max_tokens set to what was reserved (' . ($req ? $req->{json}{max_tokens} // 'none' : 'no request') . ')');

    $r = chat('noclamp', 'k2', body => $body);
    error_ok($r, 429, 'rate_limit_exceeded', 'without clamp: a request larger than the limit is refused');
    like(json_decode($r->{body})->{error}{message}, qr/tokens/, 'the message names tokens');

    # so little left that not even a short answer fits: refused
    chat('clamp', 'k3', body => '{"model":"m","messages":[{"role":"user","content":"' . ('y' x 1100) . '"}],"max_tokens":5}');
    $r = chat('clamp', 'k3', body => '{"model":"m","messages":[{"role":"user","content":"' . ('y' x 1100) . '"}],"max_tokens":5}');
    is($r->{status}, 429, 'clamp: refused when not even a minimal answer fits');
}

# ---------------------------------------------------------------------------
# dry_run: logged and let through

{
    my @st = map { chat('dry', 'd')->{status} } 1 .. 3;
    is("@st", '200 200 200', 'dry_run: every request passes');
    my @l = log_lines(qr/^dry-d\|/, 3);
    is(join(',', map { $_->[1] } @l), 'PASSED,REJECTED_REQUESTS_DRY_RUN,REJECTED_REQUESTS_DRY_RUN',
       '$llm_limit_status says what would have been refused');
    like($t->error_log, qr/llm limit zone "dry" would refuse the request \(REJECTED_REQUESTS\), dry run/,
         'and the error log says so');
}

# ---------------------------------------------------------------------------
# the reservations come back: a client abort, a provider failure after
# failover, a timeout

{
    my $c = LLMTest::HTTP::Stream->open(port => $gw, path => '/release/v1/chat/completions',
        headers => [ 'X-Tenant' => 'r', 'X-Test' => 'release-abort', 'X-Mock-Chunk-Delay' => 200,
                     'Content-Type' => 'application/json' ],
        body => '{"model":"m","messages":[{"role":"user","content":"Hello"}],"stream":true,"max_tokens":100}');
    $c->next_event;
    my $k = limits('release', 'r');
    is($k->{in_flight}, 1, 'a stream under way is in flight');
    cmp_ok($k->{tokens}{reserved}, '>=', 100, 'and holds its reservation');
    $c->close;
    log_lines(qr/^release-abort\|/, 1);
    wait_for(sub { (limits('release', 'r')->{in_flight} // 1) == 0 }, 5);
    $k = limits('release', 'r');
    is($k->{in_flight}, 0, 'client abort: nothing in flight');
    is($k->{tokens}{reserved}, 0, 'client abort: the reservation came back');

    my $used = $k->{tokens}{used};
    my $r = chat('fail', 'r', max => 100, test => 'release-fail');
    is($r->{status}, 503, 'every provider failed: 503');

    # the reservation goes back when the request is freed, just after the
    # client has its answer
    my $settled = sub { wait_for(sub { my $k = limits('release', 'r');
                                       ($k->{in_flight} // 1) == 0 && ($k->{tokens}{reserved} // 1) == 0 }, 5) };
    $settled->();
    $k = limits('release', 'r');
    is($k->{tokens}{reserved}, 0, 'provider failure: the reservation came back');
    is($k->{tokens}{used}, $used, 'provider failure: nothing charged (no usage)');

    $r = chat('release', 'r', max => 100, headers => [ 'X-Mock-Delay' => 3000 ]);
    is($r->{status}, 504, 'a provider timeout: 504');
    $settled->();
    $k = limits('release', 'r');
    is($k->{tokens}{reserved}, 0, 'timeout: the reservation came back');
    is($k->{in_flight}, 0, 'timeout: nothing in flight');
}

# ---------------------------------------------------------------------------
# a reload keeps the counts (the zone is the same)

{
    my $before = limits('req', 'a');
    ok($t->reload(undef, wait_old => 1), 'reload');
    my $after = limits('req', 'a');
    is($after->{requests}{used}, $before->{requests}{used}, 'after a reload: the same requests used');
    is(chat('req', 'a')->{status}, 429, 'after a reload: still refused');
}

# ---------------------------------------------------------------------------
# configuration

for my $c (
    [ 'llm_limit_zone z:1m requests=5/m;', qr/needs key=/ ],
    [ 'llm_limit_zone z:1m key=$remote_addr;', qr/limits nothing/ ],
    [ 'llm_limit_zone z:1m key=$remote_addr requests=5/w;', qr/invalid parameter "requests=5\/w"/ ],
    [ 'llm_limit_zone z:1m key=$remote_addr spend=0.0000001/d;', qr/invalid parameter "spend=/ ],
    [ 'llm_limit_zone z:1m key=$remote_addr tokens=0/m;', qr/invalid parameter "tokens=0\/m"/ ],
    [ 'llm_limit_zone z:1m key=$remote_addr concurrent=x;', qr/invalid parameter "concurrent=x"/ ],
    [ 'llm_limit_zone z key=$remote_addr concurrent=1;', qr/invalid zone "z"/ ],
    [ 'llm_zone s 1m;', qr/unknown llm_limit_zone "s"/, 'llm_limit s;' ],
    [ '', qr/unknown llm_limit_zone "nope"/, 'llm_limit nope;' ],
    [ 'llm_limit_zone z:1m key=$remote_addr concurrent=1;', qr/invalid parameter "fast"/, 'llm_limit z fast;' ],
) {
    my ($http, $re, $loc) = @$c;
    $loc //= '';
    my ($rc, $out) = $t->nginx_t(<<"CONF");
http {
    $http
    llm_provider p { url http://127.0.0.1:9/v1; }
    server { listen 127.0.0.1:%%PORT_X%%; location / { llm_pass p; $loc } }
}
CONF
    isnt($rc, 0, "nginx -t fails: $http $loc");
    like($out, $re, "and says why: $re") or diag($out);
}

$t->finish;
done_testing;
