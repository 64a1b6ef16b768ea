#!/usr/bin/perl
# Provider faults: refused, timeouts, resets, malformed responses, client
# disconnects.  The gateway must answer with OpenAI-style JSON errors while it
# still can, never hang, and never crash.

use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use LLMTest;
use Time::HiRes qw(time sleep);

my $t = LLMTest->new;

my @EVENTS = map { 'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m",'
                   . qq("choices":[{"index":0,"delta":{"content":"part $_"},"finish_reason":null}]}\n\n) } 1 .. 3;
my $SSE_HEAD = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
             . "Connection: close\r\n\r\n";
sub chunk { sprintf("%x\r\n", length $_[0]) . $_[0] . "\r\n" }

# the raw provider's behaviour is chosen by the model name of the request
my %script = (
    'never-answer'   => [ [ stall => 10 ] ],
    'reset-at-once'  => [ [ 'reset' ] ],
    'close-at-once'  => [ [ 'close' ] ],
    'garbage'        => [ [ send => "HELLO I AM NOT HTTP\r\n\r\n" ], [ 'close' ] ],
    'huge-header'    => [ [ send => "HTTP/1.1 200 OK\r\nX-Big: " . ('a' x 70000) . "\r\nContent-Length: 2\r\n\r\n{}" ],
                          [ 'close' ] ],
    'reset-stream'   => [ [ send => $SSE_HEAD . chunk($EVENTS[0]) . chunk($EVENTS[1]) ], [ sleep => 0.2 ],
                          [ 'reset' ] ],
    'reset-body'     => [ [ send => "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                    . "Content-Length: 1000\r\n\r\n" . '{"id":"x","object":' ],
                          [ sleep => 0.2 ], [ 'reset' ] ],
    'bad-chunked'    => [ [ send => $SSE_HEAD . chunk($EVENTS[0]) . "zz\r\nnot a chunk\r\n" ],
                          [ sleep => 0.2 ], [ 'close' ] ],
    'idle-after-one' => [ [ send => $SSE_HEAD . chunk($EVENTS[0]) ], [ wait_eof => 8 ] ],
    'drip'           => [ [ send => $SSE_HEAD . chunk($EVENTS[0]) ], [ drip => chunk($EVENTS[1]), 0.1, 80 ] ],
    # an event that never ends (1.5 MB without a blank line), then a real one
    'endless-event'  => [ [ send => $SSE_HEAD . chunk($EVENTS[0]) . chunk('data: {"x":"' . ('y' x 1_500_000)) ],
                          [ send => chunk(qq("}\n\n) . $EVENTS[1] . "data: [DONE]\n\n") . "0\r\n\r\n" ],
                          [ 'close' ] ],
);

my $raw = $t->fake_provider(port => $t->port('RAW'), handler => sub {
    my ($req) = @_;
    my $m = ref $req->{json} eq 'HASH' ? $req->{json}{model} // '' : '';
    return $script{$m} // [ [ send => LLMTest::FakeProvider::http_response(status => 500, body => 'no script') ] ];
});

$t->run(<<'CONF');
http {
    log_format llm '$http_x_test_id|$llm_provider|$llm_error|$llm_upstream_status|$status';

    llm_provider refused { url http://127.0.0.1:%%PORT_CLOSED%%/v1; key k; connect_timeout 2s; }
    llm_provider slow    { url http://127.0.0.1:%%PORT_MOCK%%/v1; key k; read_timeout 1s; }
    llm_provider raw     { url http://127.0.0.1:%%PORT_RAW%%/v1; key k; read_timeout 2s; }

    server {
        listen 127.0.0.1:%%PORT_MOCK%%;
        location /v1/ { llm_mock; }
    }

    server {
        listen 127.0.0.1:%%PORT_GW%%;
        access_log %%DIR%%/gw.log llm;
        location /refused/v1/ { llm_pass refused; }
        location /slow/v1/    { llm_pass slow; }
        location /raw/v1/     { llm_pass raw; }
    }
}
CONF

my $gw   = $t->port('GW');
my $msgs = [ { role => 'user', content => 'Hello' } ];
my $TRUE = JSON::PP::true;

sub chat {
    my ($prefix, $model, %a) = @_;
    my $stream = delete $a{stream};
    return http_request(port => $gw, method => 'POST', path => "/$prefix/v1/chat/completions",
                        body => { model => $model, messages => $msgs, ($stream ? (stream => $TRUE) : ()) },
                        timeout => 15, %a);
}

sub log_line {
    my ($id) = @_;
    my $l = wait_for(sub { (grep { /^\Q$id\E\|/ } $t->access_log('gw.log'))[0] }, 5);
    return $l // '';
}

# ---------------------------------------------------------------------------
# connection refused -> 502

{
    my $r = chat('refused', 'm', headers => [ 'X-Test-Id' => 'refused' ]);
    error_ok($r, 502, 'provider_unavailable', 'connection refused -> 502 provider_unavailable');
    $r = chat('refused', 'm', stream => 1);
    error_ok($r, 502, 'provider_unavailable', 'connection refused (stream request) -> 502 JSON');
    like(log_line('refused'), qr/^refused\|refused\|provider_unavailable\|[^|]*\|502$/,
         'connection refused: $llm_error provider_unavailable in the access log');
}

# ---------------------------------------------------------------------------
# timeouts -> 504

{
    my $t0 = time;
    my $r = chat('slow', 'm', headers => [ 'X-Mock-Delay' => 3000, 'X-Test-Id' => 'timeout' ]);
    error_ok($r, 504, 'provider_timeout', 'provider slower than read_timeout 1s -> 504 provider_timeout');
    cmp_ok(time - $t0, '<', 2.8, '504 arrives after read_timeout, not after the provider delay');
    like(log_line('timeout'), qr/^timeout\|slow\|provider_timeout\|/, 'timeout: $llm_error provider_timeout');

    $r = chat('slow', 'm', stream => 1, headers => [ 'X-Mock-Delay' => 3000 ]);
    error_ok($r, 504, 'provider_timeout', 'stream request, provider silent past read_timeout -> 504 JSON');

    $r = chat('raw', 'never-answer');
    error_ok($r, 504, 'provider_timeout', 'raw provider accepts and never answers -> 504');
}

# stall in the middle of a stream: what was produced is delivered, then the stream ends
{
    my $s = LLMTest::HTTP::Stream->open(port => $gw, path => '/slow/v1/chat/completions',
        headers => [ 'X-Mock-Stall' => 2, 'X-Test-Id' => 'stall-stream' ],
        body => { model => 'm', messages => $msgs, stream => $TRUE }, timeout => 10);
    is($s->{status}, 200, 'mid-stream stall: 200 header');
    my $t0 = time;
    $s->read_all(6);
    is(scalar @{$s->events}, 3, 'mid-stream stall: the 2 produced events are delivered, then an error event');
    like($s->events->[-1]{data}, qr/^data: \{"error":\{"message":"The stream of provider slow ended early","type":"server_error","param":null,"code":"provider_stream_error"\}\}\n\n\z/,
         'mid-stream stall: the error event is OpenAI-style (SDKs raise it)');
    ok($s->finished, 'mid-stream stall: the client stream ends (no hang) after read_timeout');
    cmp_ok(time - $t0, '<', 5, 'mid-stream stall: ends within a few seconds');
    diag('mid-stream stall: stream ' . ($s->complete ? 'ended with a clean terminator' : 'was cut (truncated)'));
    $s->close;
    like(log_line('stall-stream'), qr/^stall-stream\|slow\|/, 'mid-stream stall: request logged');
}

# non-streaming response stalled half-way: never a complete, valid 200
{
    my $r = chat('slow', 'm', headers => [ 'X-Mock-Stall' => 1 ], timeout => 6);
    my $valid = $r->{status} == 200 && $r->{complete} && defined json_decode($r->{body});
    ok(!$valid, 'non-stream stall mid-body: the client does not get a "complete" truncated JSON');
    if ($r->{status} == 504) {
        error_ok($r, 504, 'provider_timeout', 'non-stream stall mid-body: 504 provider_timeout JSON');
    } else {
        ok($r->{status} == 200 && !$r->{complete}, 'non-stream stall mid-body: response cut (header already sent)')
            or diag("status $r->{status}");
    }
    cmp_ok($r->{time}, '<', 5, 'non-stream stall mid-body: finished within a few seconds');
}

# ---------------------------------------------------------------------------
# resets and broken responses

{
    my $r = chat('raw', 'reset-at-once');
    error_ok($r, 502, 'provider_unavailable', 'provider resets before answering -> 502');
    $r = chat('raw', 'close-at-once');
    error_ok($r, 502, 'provider_unavailable', 'provider closes without answering -> 502');
    $r = chat('raw', 'garbage');
    error_ok($r, 502, 'provider_unavailable', 'provider sends a non-HTTP response -> 502');
    $r = chat('raw', 'huge-header');
    error_ok($r, 502, 'provider_unavailable', 'provider sends a 70KB header -> 502');
}

{
    my $s = LLMTest::HTTP::Stream->open(port => $gw, path => '/raw/v1/chat/completions',
        headers => [ 'X-Test-Id' => 'reset-stream' ],
        body => { model => 'reset-stream', messages => $msgs, stream => $TRUE }, timeout => 10);
    is($s->{status}, 200, 'provider resets mid-stream: 200 header');
    my $t0 = time;
    $s->read_all(6);
    my @ev = @{$s->events};
    is(join('', map { $_->{data} } @ev[0 .. $#ev - 1]), $EVENTS[0] . $EVENTS[1],
       'provider resets mid-stream: events sent before the reset are delivered');
    like($ev[-1]{data} // '', qr/^data: \{"error":\{.*"code":"provider_stream_error"\}\}/,
         'provider resets mid-stream: then an error event');
    ok($s->finished, 'provider resets mid-stream: the client stream ends');
    cmp_ok(time - $t0, '<', 4, 'provider resets mid-stream: promptly');
    diag('reset mid-stream: stream ' . ($s->complete ? 'ended with a clean terminator' : 'was cut (truncated)'));
    like(log_line('reset-stream'), qr/^reset-stream\|raw\|provider_stream_error\|/,
         'provider resets mid-stream: logged with $llm_error provider_stream_error');
}

{
    my $r = chat('raw', 'reset-body', timeout => 6);
    my $valid = $r->{status} == 200 && $r->{complete} && defined json_decode($r->{body});
    ok(!$valid, 'provider resets mid-body (non-stream): no complete 200 is faked');
    if ($r->{status} == 502) {
        error_ok($r, 502, 'provider_unavailable', 'provider resets mid-body (non-stream): 502 JSON');
    } else {
        ok($r->{status} == 200 && !$r->{complete}, 'provider resets mid-body (non-stream): response cut')
            or diag("status $r->{status}");
    }
}

{
    my $s = LLMTest::HTTP::Stream->open(port => $gw, path => '/raw/v1/chat/completions',
        body => { model => 'bad-chunked', messages => $msgs, stream => $TRUE }, timeout => 10);
    $s->read_all(6);
    ok($s->{status} == 502 || $s->finished, 'invalid chunked encoding from the provider: stream ends (or 502)');
    ok(!grep({ $_->{data} =~ /not a chunk/ } @{$s->events}),
       'invalid chunked encoding: garbage is not forwarded as an event');
}

# malformed JSON from the provider (mock X-Mock-Malformed)
{
    my $r = http_request(port => $gw, method => 'POST', path => '/slow/v1/chat/completions',
                         headers => [ 'X-Mock-Malformed' => 1 ],
                         body => { model => 'm', messages => $msgs });
    ok(($r->{status} == 200 && $r->{complete}) || $r->{status} == 502,
       'malformed JSON body from the provider: passed through or 502, request completes')
        or diag("status $r->{status} " . ($r->{error} // ''));
    error_ok($r, 502, 'provider_unavailable', 'malformed provider JSON: 502 is an OpenAI-style error')
        if $r->{status} == 502;

    my $s = LLMTest::HTTP::Stream->open(port => $gw, path => '/slow/v1/chat/completions',
        headers => [ 'X-Mock-Malformed' => 1 ],
        body => { model => 'm', messages => $msgs, stream => $TRUE });
    $s->read_all(6);
    my @p = $s->data_payloads;
    is($s->{status}, 200, 'malformed SSE event from the provider: 200');
    ok((grep { /^\{broken/ } @p), 'malformed SSE event: forwarded like any other event');
    is($p[-1], '[DONE]', 'malformed SSE event: the stream continues to [DONE]');
    ok($s->complete, 'malformed SSE event: response properly terminated');
}

# ---------------------------------------------------------------------------
# client disconnect mid-stream closes the upstream connection

for my $case ([ 'idle-after-one', 'provider idle after the first event' ],
              [ 'drip', 'provider keeps sending events' ])
{
    my ($model, $name) = @$case;
    $raw->reset_log;
    my $s = LLMTest::HTTP::Stream->open(port => $gw, path => '/raw/v1/chat/completions',
        headers => [ 'X-Test-Id' => "disconnect-$model" ],
        body => { model => $model, messages => $msgs, stream => $TRUE }, timeout => 5);
    my $ev = $s->next_event(5);
    is($ev && $ev->{data}, $EVENTS[0], "client disconnect ($name): first event received");
    my $closed = time;
    $s->close;
    my $l = $raw->wait_event(qr/^(eof|send_failed|no_eof|drip_done) /, 10) // 'nothing';
    like($l, qr/^(eof|send_failed) /, "client disconnect ($name): the provider connection is closed");
    my ($when) = $l =~ / t=([\d.]+)/;
    cmp_ok(($when // 1e10) - $closed, '<', 3, "client disconnect ($name): within 3s of the client closing");
    like(log_line("disconnect-$model"), qr/^disconnect-\Q$model\E\|raw\|client_closed_request\|/,
         "client disconnect ($name): logged with \$llm_error client_closed_request");
}

# the gateway still works after all of this
{
    my $r = chat('slow', 'm');
    is($r->{status}, 200, 'gateway still serves requests after the fault tests');
}

# an event that does not end: the gateway stops editing the stream (it would
# have to hold the event) and passes every byte on, without a limit of memory
{
    my $s = LLMTest::HTTP::Stream->open(port => $gw, path => '/raw/v1/chat/completions',
        body => { model => 'endless-event', messages => $msgs, stream => $TRUE }, timeout => 15);
    is($s->{status}, 200, 'endless event: 200 header');
    $s->read_all(10);
    ok($s->finished, 'endless event: the stream ends');
    my $body = $s->body;
    my $want = $EVENTS[0] . 'data: {"x":"' . ('y' x 1_500_000) . qq("}\n\n) . $EVENTS[1] . "data: [DONE]\n\n";
    ok(length($body) == length($want) && $body eq $want, 'endless event: every byte passed on unedited');
    $s->close;
    like($t->error_log, qr/sent an event of more than \d+ bytes: the stream is passed on unedited/,
         'endless event: a warning is logged');
}

$t->finish;
done_testing;
