#!/usr/bin/perl
# Every way a provider fails, one by one: the next provider of the route
# answers, the client gets a 200, the log line says how the first attempt
# ended, and the failing provider's breaker (failures=1) has counted it and
# is open.  Streams too: the status and headers of a stream, and its first
# byte, are awaited before the client gets anything.

use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use LLMTest;

my $t = LLMTest->new;

my $SSE_HEAD = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n";

# the fake provider's behaviour, by the X-Fault header its provider adds
my %fault = (
    reset        => [ [ 'reset' ] ],
    close        => [ [ 'close' ] ],
    garbage      => [ [ send => "SMTP ready\r\n\r\n" ], [ 'close' ] ],
    stall_header => [ [ stall => 5 ] ],
    stall_body   => [ [ send => $SSE_HEAD . "Transfer-Encoding: chunked\r\n\r\n" ], [ stall => 5 ] ],
    cut_header   => [ [ send => "HTTP/1.1 200 OK\r\nContent-Ty" ], [ 'close' ] ],
    # a reply broken off once it has begun: no failover, but a failure
    cut_stream   => [ [ send => $SSE_HEAD . "Transfer-Encoding: chunked\r\n\r\n"
                                . chunk('data: {"id":"c1","object":"chat.completion.chunk","choices":'
                                        . '[{"index":0,"delta":{"role":"assistant","content":"Hel"}}]}' . "\n\n") ],
                      [ sleep => 0.2 ], [ 'reset' ] ],
    cut_body     => [ [ send => "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                . "Content-Length: 200\r\n\r\n" . '{"id":"chatcmpl-1","choices":[' ],
                      [ sleep => 0.2 ], [ 'close' ] ],
);

sub chunk { sprintf("%x\r\n%s\r\n", length $_[0], $_[0]) }

$t->fake_provider(port => $t->port('FAKE'), handler => sub {
    my ($req) = @_;
    return $fault{ $req->{headers}{'x-fault'} // '' } // [ [ 'close' ] ];
});

my @statuses = (429, 500, 502, 503, 504, 529);

# one route per fault: the faulty provider first (weight), the good one next
my @cases = (
    # name          provider settings                                    logged
    [ refused      => 'url http://127.0.0.1:%%PORT_CLOSED%%/v1;',        'error' ],
    [ reset        => 'url http://127.0.0.1:%%PORT_FAKE%%/v1; header X-Fault reset;',   'error' ],
    [ close        => 'url http://127.0.0.1:%%PORT_FAKE%%/v1; header X-Fault close;',   'error' ],
    [ garbage      => 'url http://127.0.0.1:%%PORT_FAKE%%/v1; header X-Fault garbage;', 'error' ],
    [ cut_header   => 'url http://127.0.0.1:%%PORT_FAKE%%/v1; header X-Fault cut_header;', 'error' ],
    [ stall_header => 'url http://127.0.0.1:%%PORT_FAKE%%/v1; header X-Fault stall_header; '
                      . 'read_timeout 500ms;',                                      'timeout' ],
    (map { [ "s$_" => "url http://127.0.0.1:%%PORT_MOCK%%/v1; header X-Mock-Status $_; "
                      . 'header X-Mock-Retry-After 0;', $_ ] } @statuses),
);

# streams: a stall after the header, before the first event, is a
# first_byte_timeout; a stall before the header too
my @stream_cases = (
    [ st_header    => 'url http://127.0.0.1:%%PORT_FAKE%%/v1; header X-Fault stall_header; '
                      . 'first_byte_timeout 500ms; read_timeout 10s;',               'timeout' ],
    [ st_body      => 'url http://127.0.0.1:%%PORT_FAKE%%/v1; header X-Fault stall_body; '
                      . 'first_byte_timeout 500ms; read_timeout 10s;',               'timeout' ],
    [ st_503       => 'url http://127.0.0.1:%%PORT_MOCK%%/v1; header X-Mock-Status 503;', 503 ],
);

# replies broken off after they began: too late to fail over
my @cut_cases = (
    [ cut_stream   => 'url http://127.0.0.1:%%PORT_FAKE%%/v1; header X-Fault cut_stream;', 1 ],
    [ cut_body     => 'url http://127.0.0.1:%%PORT_FAKE%%/v1; header X-Fault cut_body;', 0 ],
);

my $providers = join "\n", map {
    "    llm_provider $_->[0] { $_->[1] key k; breaker failures=1 cooldown=60s; }\n"
    . "    llm_route $_->[0] { provider $_->[0] weight=100; provider good; }"
} @cases, @stream_cases, @cut_cases;

my $locations = join "\n", map { "        location /$_->[0]/v1/ { llm_pass $_->[0]; }" }
                           @cases, @stream_cases, @cut_cases;

$t->run(<<"CONF");
http {
    llm_zone llm 1m;

    log_format llm '\$http_x_test_id|\$llm_provider|\$llm_attempts|\$llm_failover|\$status|\$llm_error';

    llm_provider good { url http://127.0.0.1:%%PORT_MOCK%%/v1; key k; }

$providers

    server {
        listen 127.0.0.1:%%PORT_MOCK%%;
        location /v1/ { llm_mock; }
    }

    server {
        listen 127.0.0.1:%%PORT_GW%%;
        access_log %%DIR%%/gw.log llm;
        llm_attempts_header on;

$locations
        location = /status { llm_status; }
    }
}
CONF

# the expected errors of the faults, in the error log
$t->allow_error(qr/upstream timed out/, qr/upstream prematurely closed/, qr/Connection refused/,
                qr/Connection reset by peer/, qr/sent no valid HTTP/, qr/invalid header/);

my $gw = $t->port('GW');
my $msgs = [ { role => 'user', content => 'Hello' } ];

sub chat {
    my ($route, $stream) = @_;
    return http_request(port => $gw, method => 'POST', path => "/$route/v1/chat/completions",
                        headers => [ 'X-Test-Id' => $route ],
                        body => { model => 'gpt-4o-mini', messages => $msgs,
                                  ($stream ? (stream => JSON::PP::true) : ()) },
                        timeout => 15);
}

sub log_line {
    my ($id) = @_;
    return wait_for(sub { (grep { /^\Q$id\E\|/ } $t->access_log('gw.log'))[0] }, 5) // '';
}

sub breaker { (json_decode(http_request(port => $gw, path => '/status')->{body}) // {})
                  ->{breakers}{$_[0]} // {} }

for my $c (@cases, @stream_cases) {
    my ($name, undef, $how) = @$c;
    my $stream = grep { $_ == $c } @stream_cases;

    my $r = chat($name, $stream);
    is($r->{status}, 200, "$name: the next provider answers: 200");
    is($r->{headers}{'x-llm-attempts'}, "$name:$how,good:200", "$name: X-LLM-Attempts $name:$how,good:200");
    is(log_line($name), "$name|good|2|$name:$how,good:200|200|-", "$name: the log line");

    if ($stream) {
        like($r->{body}, qr/^data: \{.*data: \[DONE\]\n\n\z/s, "$name: the client gets the good provider's whole stream");
        unlike($r->{body}, qr/error/, "$name: and nothing of the failed attempt");
    }

    my $b = breaker($name);
    is($b->{state}, 'open', "$name: the breaker counted the failure and is open");
}

# the providers' attempts on the status page
{
    my $st = json_decode(http_request(port => $gw, path => '/status')->{body}) // {};
    my $n = @cases + @stream_cases;
    is_deeply($st->{total}{attempts}, { total => 2 * $n, failed => $n },
              "status: $n failed attempts of " . 2 * $n);
    is($st->{providers}{good}{requests}, $n, "status: the good provider answered all $n requests");
}

# a reply broken off after it began goes to the client as far as it came
# (a stream ends with an error event): it is the provider's failure, for
# its breaker and on the status page
for my $c (@cut_cases) {
    my ($name, undef, $stream) = @$c;

    my $r = chat($name, $stream);
    is($r->{status}, 200, "$name: the reply had begun: 200");
    is($r->{headers}{'x-llm-attempts'}, "$name:200", "$name: one attempt, too late to fail over");

    if ($stream) {
        like($r->{body}, qr/"content":"Hel".*\n\ndata: \{"error":\{.*"code":"provider_stream_error"\}\}\n\n\z/s,
             "$name: what came, then an error event");
        like(log_line($name), qr/^\Q$name\E\|\Q$name\E\|1\|\Q$name\E:cut\|200\|provider_stream_error$/,
             "$name: logged with provider_stream_error, the attempt cut");
    } else {
        ok(length($r->{body} // '') < 200, "$name: the client does not get a whole body");
        like(log_line($name), qr/^\Q$name\E\|\Q$name\E\|1\|\Q$name\E:cut\|200\|provider_reply_cut$/,
             "$name: logged with provider_reply_cut, the attempt cut");
    }

    is(breaker($name)->{state}, 'open', "$name: the breaker counted the failure and is open");

    my $st = json_decode(http_request(port => $gw, path => '/status')->{body}) // {};
    is_deeply($st->{providers}{$name}{attempts}, { total => 1, failed => 1 },
              "$name: status: one attempt, failed");
}

$t->finish;
done_testing;
