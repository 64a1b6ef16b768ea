#!/usr/bin/perl
# Circuit breakers: shared by the workers; open after enough failures that
# are a large enough share of the attempts of a sliding window, skipped by
# routes while open; an immediate 503 when every provider of a route is
# open; after the cooldown one probe, one only across the workers.  A read
# timeout counts once per client and window, so that one client's slow
# requests cannot open a breaker that every client shares.

use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use LLMTest;
use Time::HiRes qw(sleep);

my $t = LLMTest->new(workers => 2);

# a provider that fails until the test says it has recovered
my $recovered = $t->dir . '/recovered';
$t->fake_provider(port => $t->port('FAKE'), handler => sub {
    my $ok = -e $recovered;
    return [ [ send => LLMTest::FakeProvider::http_response(
        status => $ok ? 200 : 503, headers => [ 'Content-Type' => 'application/json' ],
        body => $ok ? '{"id":"chatcmpl-1","object":"chat.completion","choices":[]}'
                    : '{"error":{"message":"down","type":"server_error","param":null,"code":null}}') ] ];
});

$t->run(<<'CONF');
http {
    llm_zone llm 1m;

    log_format llm '$http_x_test_id|$llm_provider|$llm_failover|$status';

    llm_provider bad  { url http://127.0.0.1:%%PORT_MOCK%%/v1; key k; header X-Mock-Status 503;
                        breaker failures=2 cooldown=2s; }
    llm_provider good { url http://127.0.0.1:%%PORT_MOCK%%/v1; key k; }
    llm_provider flaky { url http://127.0.0.1:%%PORT_MOCK%%/v1; key k;
                         breaker failures=2 cooldown=1s; }

    llm_provider sturdy { url http://127.0.0.1:%%PORT_MOCK%%/v1; key k;
                          breaker failures=2 cooldown=60s; }

    llm_route split { provider bad weight=5; provider good; }
    llm_route alone { provider flaky; }
    llm_route kept  { provider sturdy; }

    llm_provider limited { url http://127.0.0.1:%%PORT_MOCK%%/v1; key k;
                           breaker failures=2 cooldown=60s; }
    llm_route limited { provider limited; }

    llm_provider share { url http://127.0.0.1:%%PORT_MOCK%%/v1; key k;
                         breaker failures=3 rate=50% cooldown=60s; }
    llm_route share { provider share; }

    llm_provider slow { url http://127.0.0.1:%%PORT_MOCK%%/v1; key k;
                        read_timeout 1s;
                        breaker failures=2 cooldown=60s; }
    llm_route slow { provider slow; retry off; }

    llm_provider reasoning { url http://127.0.0.1:%%PORT_MOCK%%/v1; key k;
                             first_byte_timeout 1s;
                             breaker failures=3 cooldown=60s; }
    llm_route reasoning { provider reasoning; retry off; }

    llm_provider brief { url http://127.0.0.1:%%PORT_MOCK%%/v1; key k;
                         breaker failures=2 window=2s cooldown=60s; }
    llm_route brief { provider brief; }

    llm_provider down1 { url http://127.0.0.1:%%PORT_MOCK%%/v1; key k; header X-Mock-Status 503;
                         breaker failures=1 cooldown=60s; }
    llm_provider down2 { url http://127.0.0.1:%%PORT_MOCK%%/v1; key k; header X-Mock-Status 503;
                         breaker failures=1 cooldown=60s; }
    llm_route both { provider down1; provider down2; }

    llm_provider recov { url http://127.0.0.1:%%PORT_FAKE%%/v1; key k;
                         breaker failures=1 cooldown=1s; }
    llm_provider good3 { url http://127.0.0.1:%%PORT_MOCK%%/v1; key k; }
    llm_route recover { provider recov; provider good3; }

    server {
        listen 127.0.0.1:%%PORT_MOCK%%;
        access_log %%DIR%%/mock.log;
        location /v1/ { llm_mock; }
    }

    server {
        listen 127.0.0.1:%%PORT_GW%%;
        access_log %%DIR%%/gw.log llm;
        location /split/v1/ { llm_pass split; }
        location /alone/v1/ { llm_pass alone; }
        location /kept/v1/  { llm_pass kept; }
        location /limited/v1/ { llm_pass limited; }
        location /both/v1/  { llm_pass both; }
        location /share/v1/ { llm_pass share; }
        location /slow/v1/  { llm_pass slow; }
        location /reasoning/v1/ { llm_pass reasoning; }
        location /brief/v1/ { llm_pass brief; }
        location /recover/v1/ { llm_pass recover; }
        location = /status  { llm_status; }
    }
}
CONF

my $gw   = $t->port('GW');
my $msgs = [ { role => 'user', content => 'Hello' } ];

sub chat {
    my ($route, @h) = @_;
    return http_request(port => $gw, method => 'POST', path => "/$route/v1/chat/completions",
                        body => { model => 'm', messages => $msgs }, headers => \@h, timeout => 15);
}

sub status { json_decode(http_request(port => $gw, path => '/status')->{body}) // {} }

sub mock_requests { scalar grep { /chat\/completions/ } $t->access_log('mock.log') }

# a failing provider is skipped once its breaker is open
{
    my @attempts;
    for my $i (1 .. 6) {
        my $r = chat('split');
        is($r->{status}, 200, "split $i: 200 (the good provider answers)");
    }

    my $b = status()->{breakers}{bad} // {};
    is($b->{state}, 'open', 'the failing provider\'s breaker is open');
    is($b->{opened}, 1, 'it opened once');

    my $before = mock_requests();
    my $r = chat('split', 'X-Test-Id' => 'skip');
    is($r->{status}, 200, 'with the breaker open the request still succeeds');
    my $line = wait_for(sub { (grep { /^skip\|/ } $t->access_log('gw.log'))[0] }, 5) // '';
    like($line, qr/^skip\|good\|good:200\|200$/, 'the open provider is not tried at all');
    is(mock_requests() - $before, 1, 'one request reached the providers');

    # the attempts of every provider, those that failed over too
    my $st = status();
    is_deeply($st->{providers}{bad}{attempts}, { total => 2, failed => 2 },
              'status: the failing provider made 2 attempts, both failed');
    is($st->{providers}{bad}{requests} // 0, 0, 'and answered no request');
    is_deeply($st->{providers}{good}{attempts}, { total => 7, failed => 0 },
              'status: the good provider made 7 attempts, none failed');
    is_deeply($st->{total}{attempts}, { total => 9, failed => 2 },
              'status: 9 attempts for 7 requests in all');
}

# every provider of a route open: 503 at once, without touching a provider
{
    for (1 .. 2) {
        my $r = chat('alone', 'X-Mock-Status' => 500);
        is($r->{status}, 500, 'the provider fails (500)');
    }

    is((status()->{breakers}{flaky} // {})->{state}, 'open', 'after 2 failures in a row: open');

    my $before = mock_requests();
    my $r = chat('alone');
    error_ok($r, 503, 'providers_unavailable', 'every provider open: 503 providers_unavailable');
    like($r->{headers}{'retry-after'} // '', qr/^[12]$/, 'with Retry-After');
    is(mock_requests() - $before, 0, 'no provider was touched');
}

# after the cooldown: one probe, one only, across the two workers
{
    sleep 1.3;

    my $before = mock_requests();
    my @pids;
    for my $i (1 .. 4) {
        my $pid = fork();
        if ($pid == 0) {
            # the probe takes 500 ms: the others come while it is under way
            my $r = chat('alone', 'X-Test-Id' => "probe-$i", 'X-Mock-Delay' => 500);
            exit($r->{status} == 200 ? 0 : $r->{status} == 503 ? 3 : 1);
        }
        push @pids, $pid;
    }

    my %rc;
    for my $pid (@pids) { waitpid($pid, 0); $rc{$? >> 8}++; }

    is($rc{0} // 0, 1, 'half-open: one of 4 concurrent requests probes the provider (and it answers)');
    is($rc{3} // 0, 3, 'the 3 others get 503 at once');
    is(mock_requests() - $before, 1, 'one request reached the provider');

    is((status()->{breakers}{flaky} // {})->{state}, 'closed', 'the probe succeeded: the breaker is closed');

    my $r = chat('alone');
    is($r->{status}, 200, 'closed: requests go through again');
}

# a failed probe opens the breaker again
{
    chat('alone', 'X-Mock-Status' => 503) for 1 .. 2;
    is((status()->{breakers}{flaky} // {})->{state}, 'open', 'open again after 2 failures');

    sleep 1.2;
    my $r = chat('alone', 'X-Mock-Status' => 503);
    is($r->{status}, 503, 'the probe fails');
    my $b = status()->{breakers}{flaky} // {};
    is($b->{state}, 'open', 'a failed probe opens the breaker at once');
    is($b->{opened}, 3, 'opened three times in all');
}

# a 429 without Retry-After is one failure; with Retry-After: 1 the breaker
# opens at once, for a second (not for the 60s cooldown)
{
    my $r = chat('limited', 'X-Mock-Status' => 429, 'X-Mock-Retry-After' => 0);
    is($r->{status}, 429, 'a 429 without Retry-After goes to the client');
    ok(!defined $r->{headers}{'retry-after'}, 'it has no Retry-After');
    my $b = status()->{breakers}{limited} // {};
    is($b->{state}, 'closed', '429 without Retry-After: one failure of 2, still closed');
    is($b->{failures}, 1, 'one failure counted');

    $r = chat('limited');
    is($r->{status}, 200, 'a success');
    $b = status()->{breakers}{limited} // {};
    is($b->{failures}, 1, 'a success: still one failure in the window');
    is($b->{attempts}, 2, 'a success: two attempts in the window');

    $r = chat('limited', 'X-Mock-Status' => 429);
    is($r->{headers}{'retry-after'}, '1', 'a 429 with Retry-After: 1');
    is((status()->{breakers}{limited} // {})->{state}, 'open', 'Retry-After opens the breaker at once');
    error_ok(chat('limited'), 503, 'providers_unavailable', 'open: 503 at once');

    sleep 1.2;
    is(chat('limited')->{status}, 200, 'a second later (not 60s): the probe goes through');
    is((status()->{breakers}{limited} // {})->{state}, 'closed', 'and closes the breaker');
}

# both providers of a route down: the first request tries both (the client
# gets the last 503), then both breakers are open and the answer is an
# immediate 503 without touching a provider
{
    my $r = chat('both', 'X-Test-Id' => 'both-1');
    is($r->{status}, 503, 'both down: the last provider\'s 503');
    my $line = wait_for(sub { (grep { /^both-1\|/ } $t->access_log('gw.log'))[0] }, 5) // '';
    like($line, qr/^both-1\|down\d\|down(1:503,down2|2:503,down1):503\|503$/, 'both were tried');

    my $s = status()->{breakers};
    is(($s->{down1} // {})->{state}, 'open', 'down1 open');
    is(($s->{down2} // {})->{state}, 'open', 'down2 open');

    my $before = mock_requests();
    for (1 .. 3) {
        $r = chat('both');
        error_ok($r, 503, 'providers_unavailable', 'both open: 503 providers_unavailable');
        cmp_ok($r->{headers}{'retry-after'} // 0, '>=', 50, 'Retry-After: when the first breaker may close');
    }
    is(mock_requests() - $before, 0, 'no provider was touched');
}

# after the cooldown, the next request probes the provider first, whatever
# the weighted split would pick: the provider is back at once
for my $round (1 .. 3) {
    unlink $recovered;
    for my $i (1 .. 4) {
        last if ((status()->{breakers}{recov} // {})->{state} // '') eq 'open';
        chat('recover');
    }
    is((status()->{breakers}{recov} // {})->{state}, 'open', "round $round: the failing provider's breaker is open");

    open my $fh, '>', $recovered or die; close $fh;
    sleep 1.2;

    my $r = chat('recover', 'X-Test-Id' => "recover-$round");
    is($r->{status}, 200, "round $round: after the cooldown: 200");
    my $line = wait_for(sub { (grep { /^recover-$round\|/ } $t->access_log('gw.log'))[0] }, 5) // '';
    like($line, qr/^recover-$round\|recov\|recov:200\|200$/,
         "round $round: the first request after the cooldown probes the provider first");
    is((status()->{breakers}{recov} // {})->{state}, 'closed', "round $round: and closes its breaker");
}

# a reload keeps the breakers: they live in the zone, not in the workers
{
    chat('kept', 'X-Mock-Status' => 502) for 1 .. 2;
    is((status()->{breakers}{sturdy} // {})->{state}, 'open', 'before the reload: open');

    ok($t->reload(undef, wait_old => 1), 'reload: new workers started, the old ones gone');

    my $b = status()->{breakers}{sturdy} // {};
    is($b->{state}, 'open', 'after the reload: still open');
    is($b->{opened}, 1, 'and opened once, as before');

    my $before = mock_requests();
    for (1 .. 4) {
        my $r = chat('kept');
        error_ok($r, 503, 'providers_unavailable', 'the new workers skip the open provider');
    }
    is(mock_requests() - $before, 0, 'no provider was touched after the reload');
}

# the share of failures: failures=3 rate=50% stays closed while the
# failures are fewer than half of the attempts, and opens when they are not
{
    my @pattern = (503, 0, 0, 503, 0, 0, 503);
    for my $st (@pattern) {
        chat('share', $st ? ('X-Mock-Status' => $st) : ());
    }
    my $b = status()->{breakers}{share} // {};
    is($b->{state}, 'closed', '3 failures in 7 attempts (43%): closed');
    is($b->{failures}, 3, '3 failures counted');
    is($b->{attempts}, 7, '7 attempts counted');
    chat('share', 'X-Mock-Status' => 503);
    $b = status()->{breakers}{share} // {};
    is($b->{state}, 'open', '4 failures in 8 attempts (50%): open');
}

# one client's slow requests (past the read_timeout) count once in the
# window: the breaker opens only when other clients time out too
{
    my $slow = sub { chat('slow', 'X-Mock-Delay' => 1500, 'Authorization' => "Bearer $_[0]") };
    for (1 .. 4) {
        my $r = $slow->('client-a');
        error_ok($r, 504, 'provider_timeout', 'a slow request of client A: 504');
    }
    my $b = status()->{breakers}{slow} // {};
    is($b->{state}, 'closed', "4 slow requests of one client: the breaker stays closed");
    is($b->{failures}, 1, 'they count as one failure');
    is(chat('slow', 'Authorization' => 'Bearer client-c')->{status}, 200, 'another client is served');

    $slow->('client-b');
    $b = status()->{breakers}{slow} // {};
    is($b->{state}, 'open', 'a second client timing out too: the provider is judged slow, open');
}

# the attack of a client that asks for long reasoning, streamed, past the
# first_byte_timeout: three in a row do not open the breaker of failures=3
{
    for (1 .. 3) {
        my $r = http_request(port => $gw, method => 'POST', path => '/reasoning/v1/chat/completions',
                             body => { model => 'm', messages => $msgs, stream => JSON::PP::true },
                             headers => [ 'X-Mock-Delay' => 1500, 'X-Api-Key' => 'tenant-x' ], timeout => 15);
        error_ok($r, 504, 'provider_timeout', 'a stream past first_byte_timeout: 504');
    }
    is((status()->{breakers}{reasoning} // {})->{state}, 'closed',
       "one client's 3 slow streams: the breaker everyone shares stays closed");
}

# failures older than the window are forgotten
{
    chat('brief', 'X-Mock-Status' => 503);
    sleep 4.2;
    chat('brief', 'X-Mock-Status' => 503);
    my $b = status()->{breakers}{brief} // {};
    is($b->{state}, 'closed', 'two failures more than two windows apart: closed');
    is($b->{failures}, 1, 'one failure in the window');
    chat('brief', 'X-Mock-Status' => 503);
    is((status()->{breakers}{brief} // {})->{state}, 'open', 'two in the window: open');
}

# configuration
{
    my ($rc, $out) = $t->nginx_t(<<'CONF');
http {
    llm_provider a { url http://127.0.0.1:1/v1; breaker failures=0; }
    server { listen 127.0.0.1:%%PORT_X%%; location / { llm_pass a; } }
}
CONF
    isnt($rc, 0, 'breaker failures=0 fails nginx -t');
    like($out, qr/invalid parameter "failures=0"/, 'and says why');

    for my $bad ('rate=0%', 'rate=101%', 'rate=50', 'window=100ms', 'window=x') {
        ($rc, $out) = $t->nginx_t(<<"CONF");
http {
    llm_provider a { url http://127.0.0.1:1/v1; breaker failures=2 $bad; }
    server { listen 127.0.0.1:%%PORT_X%%; location / { llm_pass a; } }
}
CONF
        isnt($rc, 0, "breaker $bad fails nginx -t");
        like($out, qr/invalid parameter "\Q$bad\E"/, "breaker $bad: says why");
    }

    ($rc, $out) = $t->nginx_t(<<'CONF');
http {
    llm_zone llm 1m;
    llm_provider a { url http://127.0.0.1:1/v1; breaker failures=2 rate=100% window=10s cooldown=5s; }
    server { listen 127.0.0.1:%%PORT_X%%; location / { llm_pass a; } }
}
CONF
    is($rc, 0, 'breaker with rate= and window=: nginx -t passes') or diag($out);
}

$t->finish;
done_testing;
