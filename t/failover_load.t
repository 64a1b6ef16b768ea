#!/usr/bin/perl
# Failover under load, with 2 workers and a reload in the middle: a provider
# that fails at random (503, reset, a stream that stalls before its first
# event, a 529) in front of one that answers.  Every request gets a whole
# answer and one log line; the attempts of the log add up to those of the
# status page; the breaker of the failing provider opens and closes as the
# load goes on; no worker dies.

use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use LLMTest;
use Time::HiRes qw(time sleep);

my $t = LLMTest->new(workers => 2, error_level => 'notice');

my $COMPLETION = '{"id":"chatcmpl-flaky","object":"chat.completion","created":1,"model":"m",'
               . '"choices":[{"index":0,"message":{"role":"assistant","content":"flaky ok"},'
               . '"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}';

my $SSE = join '', map { "data: $_\n\n" }
    '{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":"flaky"}}]}',
    '{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}',
    '{"id":"c","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}',
    '[DONE]';

sub resp {
    my ($status, $type, $body) = @_;
    return LLMTest::FakeProvider::http_response(status => $status, headers => [ 'Content-Type' => $type ],
                                                body => $body);
}

# by the request's number: one answer in two is good, the others fail in
# one of four ways, never 5 in a row (the stalls are streams: the odd
# numbers are); numbers 100 to 129 all fail, so that the breaker opens
$t->fake_provider(port => $t->port('FLAKY'), handler => sub {
    my ($req) = @_;
    my $stream = ($req->{body} // '') =~ /"stream"\s*:\s*true/;
    my ($i) = ($req->{body} // '') =~ /"hi (\d+)"/;
    my $n = ($i // 0) >= 100 && $i < 130 ? 0 : ($i // 0) % 8;
    return $n == 0 ? [ [ send => resp(503, 'application/json', '{"error":{"message":"busy","type":"server_error"}}') ] ]
         : $n == 1 ? [ [ 'reset' ] ]
         : $n == 2 ? [ [ send => resp(529, 'application/json',
                                      '{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}') ] ]
         : $n == 3 && $stream
                   ? [ [ send => "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                                 . "Transfer-Encoding: chunked\r\n\r\n" ], [ stall => 2 ] ]
         : $stream ? [ [ send => resp(200, 'text/event-stream', $SSE) ] ]
         :           [ [ send => resp(200, 'application/json', $COMPLETION) ] ];
});

my $conf = <<'CONF';
http {
    llm_zone llm 1m;

    log_format llm '$http_x_test_id|$status|$llm_provider|$llm_attempts|$llm_failover|$llm_usage_source|$llm_error';

    llm_provider flaky { url http://127.0.0.1:%%PORT_FLAKY%%/v1; key k;
                         first_byte_timeout 300ms;
                         breaker failures=5 cooldown=300ms; }
    llm_provider good  { url http://127.0.0.1:%%PORT_MOCK%%/v1; key k; }

    llm_route r { provider flaky weight=3; provider good; }

    server {
        listen 127.0.0.1:%%PORT_MOCK%%;
        access_log off;
        location /v1/ { llm_mock delay=5ms; }
    }

    server {
        listen 127.0.0.1:%%PORT_GW%%;
        access_log %%DIR%%/gw.log llm;
        location /v1/ { llm_pass r; }
        location = /status { llm_status; }
    }
}
CONF

$t->run($conf);
$t->allow_error(qr/upstream timed out/, qr/Connection reset by peer/, qr/prematurely closed/);

my $gw = $t->port('GW');
my $N = 300;

sub job {
    my ($i) = @_;
    my $stream = $i % 2;
    my $r = http_request(port => $gw, method => 'POST', path => '/v1/chat/completions',
                         headers => [ 'X-Test-Id' => "load-$i" ], timeout => 20,
                         body => { model => 'gpt-4o-mini', messages => [ { role => 'user', content => "hi $i" } ],
                                   ($stream ? (stream => JSON::PP::true) : ()) });
    return "status $r->{status} " . ($r->{error} // '') if $r->{status} != 200;
    if ($stream) {
        return 'stream without [DONE]' unless $r->{body} =~ /data: \[DONE\]\n\n\z/;
        return 'stream with an error event' if $r->{body} =~ /"error"/;
    } else {
        return 'no answer in the body' unless ref $r->{json} eq 'HASH' && $r->{json}{choices};
    }
    return '';
}

my @workers = $t->worker_pids;
my @fail = $t->parallel('load', $N, 8, \&job, sub {
    wait_for(sub { $t->done_count('load') >= $N / 3 }, 60);
    ok($t->reload(undef, wait_old => 1), 'a reload in the middle of the load');
});
is(scalar @fail, 0, "$N requests (half streamed) through a failing provider: every one a whole 200 answer")
    or diag(join "\n", @fail[0 .. ($#fail < 9 ? $#fail : 9)]);

# the log: one line a request, and how each attempt ended
my @lines;
wait_for(sub { @lines = grep { /^load-\d+\|/ } $t->access_log('gw.log'); @lines >= $N }, 10);
is(scalar @lines, $N, 'one log line a request');
my %ids = map { (split /\|/)[0] => 1 } @lines;
is(scalar keys %ids, $N, 'for every request');

my ($attempts, $failed, %how) = (0, 0);
for my $l (@lines) {
    my (undef, $status, $provider, $n, $failover, $source) = split /\|/, $l;
    my @a = split /,/, $failover;
    $attempts += @a;
    for my $a (@a) {
        my ($p, $end) = split /:/, $a;
        $how{$end}++;
        $failed++ unless $end eq '200';
    }
}
ok($how{503} && $how{error} && $how{529}, 'the failures were 503s, resets, 529s (' .
   join(', ', map { "$_: $how{$_}" } sort keys %how) . ')');
ok($how{timeout}, 'and streams stalled before their first event');
is(scalar(grep { (split /\|/)[5] ne 'provider' } @lines), 0, 'every request has the usage of the provider that answered');
is(scalar(grep { (split /\|/)[6] ne '-' } @lines), 0, 'and no gateway error');

# the status page agrees with the log, across the reload
my $st = json_decode(http_request(port => $gw, path => '/status')->{body}) // {};
is($st->{total}{requests}, $N, 'status: the requests, across the reload');
is_deeply($st->{total}{attempts}, { total => $attempts, failed => $failed },
          "status: $attempts attempts, $failed failed, as in the log");
cmp_ok($st->{breakers}{flaky}{opened} // 0, '>=', 1, 'the breaker of the failing provider opened ('
       . ($st->{breakers}{flaky}{opened} // 0) . ' times) and let it back');
ok(($st->{providers}{flaky}{requests} // 0) > 0, 'the failing provider still answered some requests ('
   . ($st->{providers}{flaky}{requests} // 0) . ')');

$t->finish;
done_testing;
