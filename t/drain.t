#!/usr/bin/perl
# A client that goes away once the model has finished (after the finish
# reason, before the usage that follows it) is billed on the provider's
# usage: the gateway reads the rest of the reply, bounded in time and
# size, and sends nothing more.  A client that goes away mid-generation
# closes the provider request, and its usage is estimated.

use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use LLMTest;
use Time::HiRes qw(time sleep);

my $t = LLMTest->new;

sub chunk { sprintf("%x\r\n", length $_[0]) . $_[0] . "\r\n" }

my $HEAD = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
         . "Connection: close\r\n\r\n";

sub ev { 'data: ' . $_[0] . "\n\n" }

my @CONTENT = map { ev(qq({"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"word $_ "},"finish_reason":null}],"usage":null})) } 1 .. 4;
my $FINISH = ev('{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}');
my $USAGE = ev('{"id":"c","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":1234,"completion_tokens":999,"total_tokens":2233}}');
my $DONE = "data: [DONE]\n\n";

my $A_START = "event: message_start\ndata: " . '{"type":"message_start","message":{"id":"m","type":"message","role":"assistant","content":[],"model":"claude","usage":{"input_tokens":321,"output_tokens":1}}}' . "\n\n";
my $A_TEXT = "event: content_block_delta\ndata: " . '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello there"}}' . "\n\n";
my $A_DELTA = "event: message_delta\ndata: " . '{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":777}}' . "\n\n";
my $A_STOP = "event: message_stop\ndata: " . '{"type":"message_stop"}' . "\n\n";

my %script = (
    # the usage comes 0.6 s after the finish reason
    'late-usage'  => [ [ send => $HEAD . chunk(join '', @CONTENT) . chunk($FINISH) ], [ sleep => 0.6 ],
                       [ send => chunk($USAGE . $DONE) . "0\r\n\r\n" ], [ 'close' ] ],
    # the model is slow: the client leaves before it finishes
    'slow-words'  => [ [ send => $HEAD . chunk($CONTENT[0]) ], [ drip => chunk($CONTENT[1]), 0.1, 100 ] ],
    # finished, and then nothing (the connection stays open)
    'no-usage'    => [ [ send => $HEAD . chunk(join '', @CONTENT) . chunk($FINISH) ], [ stall => 8 ] ],
    # finished, then endless bytes that are not the usage
    'flood'       => [ [ send => $HEAD . chunk(join '', @CONTENT) . chunk($FINISH) ], [ sleep => 0.3 ],
                       [ drip => chunk(': ' . ('x' x 65000) . "\n\n"), 0.001, 100 ] ],
    # Anthropic: message_stop comes late, after message_delta
    'claude-late' => [ [ send => $HEAD . chunk($A_START . $A_TEXT . $A_DELTA) ], [ sleep => 0.6 ],
                       [ send => chunk($A_STOP) . "0\r\n\r\n" ], [ 'close' ] ],
);

my $raw = $t->fake_provider(port => $t->port('RAW'), handler => sub {
    my ($req) = @_;
    my $m = ref $req->{json} eq 'HASH' ? $req->{json}{model} // '' : '';
    return $script{$m} // [ [ send => LLMTest::FakeProvider::http_response(status => 500, body => 'no') ] ];
});

$t->run(<<'CONF');
http {
    log_format llm '$llm_model|$llm_usage_source|$llm_input_tokens|$llm_output_tokens|$llm_error|$status';

    llm_provider raw    { url http://127.0.0.1:%%PORT_RAW%%/v1; key k; read_timeout 2s; }
    llm_provider claude { format anthropic; url http://127.0.0.1:%%PORT_RAW%%/v1; key k; read_timeout 2s; }

    server {
        listen 127.0.0.1:%%PORT_GW%%;
        access_log %%DIR%%/gw.log llm;
        location /v1/        { llm_pass raw; }
        location /claude/v1/ { llm_pass claude; }
    }
}
CONF

my $gw = $t->port('GW');

sub open_stream {
    my ($model, $path) = @_;
    return LLMTest::HTTP::Stream->open(port => $gw, path => $path // '/v1/chat/completions',
        headers => [ 'Content-Type' => 'application/json' ],
        body => qq({"model":"$model","messages":[{"role":"user","content":"Hi"}],"stream":true,"max_tokens":100}));
}

sub log_of {
    my ($model) = @_;
    my $l = wait_for(sub { (grep { /^\Q$model\E\|/ } $t->access_log('gw.log'))[0] }, 15) // '';
    return [ split /\|/, $l, -1 ];
}

# the client leaves right after the finish reason
{
    my $s = open_stream('late-usage');
    my $got = '';
    while (defined(my $e = $s->next_event)) {
        $got .= $e->{data} // '';
        last if $got =~ /"finish_reason":"stop"/;
    }
    like($got, qr/finish_reason":"stop"/, 'the client read up to the finish reason');
    $s->close;
    my $l = log_of('late-usage');
    is($l->[1], 'provider', 'left after the finish reason: the provider\'s usage is billed');
    is($l->[2], 1234, 'its input tokens');
    is($l->[3], 999, 'its output tokens');
    is($l->[4], 'client_closed_request', '$llm_error says the client left');
    like($t->error_log, qr/client closed the connection after the model finished/, 'the error log says so');
}

# Anthropic: the client leaves after message_delta, before message_stop
{
    my $s = open_stream('claude-late', '/claude/v1/messages');
    my $got = '';
    while (defined(my $e = $s->next_event)) {
        $got .= $e->{data} // '';
        last if $got =~ /message_delta/;
    }
    $s->close;
    my $l = log_of('claude-late');
    is($l->[1], 'provider', 'Anthropic, left before message_stop: the provider\'s usage');
    is($l->[3], 777, 'Anthropic: its output tokens');
}

# the client leaves mid-generation: the provider request is closed at once
{
    my $s = open_stream('slow-words');
    $s->next_event;
    my $t0 = time;
    $s->close;
    my $l = log_of('slow-words');
    is($l->[1], 'estimated', 'left mid-generation: the usage is estimated');
    ok($raw->wait_event(qr/^(eof|send_failed)/, 5), 'the provider connection was closed');
    cmp_ok(time - $t0, '<', 3, 'at once, not after the drip');
}

# finished, and the provider sends nothing more: bounded by read_timeout
{
    my $s = open_stream('no-usage');
    my $got = '';
    while (defined(my $e = $s->next_event)) {
        $got .= $e->{data} // '';
        last if $got =~ /finish_reason":"stop"/;
    }
    my $t0 = time;
    $s->close;
    my $l = log_of('no-usage');
    is($l->[1], 'estimated', 'no usage after the finish: estimated');
    cmp_ok(time - $t0, '<', 5, 'given up within the read_timeout');
}

# finished, then a flood that is not the usage: bounded in size
{
    my $s = open_stream('flood');
    my $got = '';
    while (defined(my $e = $s->next_event)) {
        $got .= $e->{data} // '';
        last if $got =~ /finish_reason":"stop"/;
    }
    $s->close;
    my $l = log_of('flood');
    is($l->[1], 'estimated', 'a flood after the finish: estimated');
    like($t->error_log, qr/sent no usage in \d+ bytes after the client closed/, 'given up after a bounded size');
}

$t->finish;
done_testing;
