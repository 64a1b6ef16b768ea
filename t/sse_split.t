#!/usr/bin/perl
# SSE pass-through: a raw provider sends a valid OpenAI stream split at
# awkward byte boundaries (chunked, Content-Length and close-delimited
# framing); the client must receive exactly the provider's event bytes, in
# order, and each event as soon as it is complete.

use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use LLMTest;
use Time::HiRes qw(time sleep);

my $t = LLMTest->new;

# a realistic OpenAI stream, with multi-byte UTF-8 content
sub ev { 'data: ' . $_[0] . "\n\n" }
my $pre = '{"id":"chatcmpl-abc123","object":"chat.completion.chunk","created":1718000000,"model":"gpt-x","system_fingerprint":"fp_1",';
my @EVENTS = (
    ev($pre . '"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}'),
    ev($pre . '"choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}]}'),
    ev($pre . qq("choices":[{"index":0,"delta":{"content":", w\xc3\xb6rld \xe2\x9c\x93"},"logprobs":null,"finish_reason":null}]})),
    ev($pre . qq("choices":[{"index":0,"delta":{"content":" \xf0\x9f\x9a\x80 data: not an event\\n\\n"},"logprobs":null,"finish_reason":null}]})),
    ev($pre . '"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]}'),
    ev('[DONE]'),
);
my $BODY = join '', @EVENTS;

my $HEAD = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n";

sub chunked_wire {
    my ($chunks, %o) = @_;
    my $w = '';
    for my $c (@$chunks) {
        my $size = sprintf($o{upper} ? '%X' : '%x', length $c);
        $size .= ';ext=1' if $o{ext};
        $w .= "$size\r\n$c\r\n";
    }
    return $w . "0\r\n\r\n";
}

# split $s at the given offsets
sub cut {
    my ($s, @at) = @_;
    my @p;
    my $prev = 0;
    for my $o (sort { $a <=> $b } grep { $_ > 0 && $_ < length $s } @at) {
        next if $o == $prev;
        push @p, substr($s, $prev, $o - $prev);
        $prev = $o;
    }
    push @p, substr($s, $prev);
    return @p;
}

sub offsets_of {
    my ($s, $needle, $delta) = @_;
    my @o;
    my $i = -1;
    while (($i = index($s, $needle, $i + 1)) >= 0) { push @o, $i + $delta }
    return @o;
}

my $CHUNKED_HEAD = $HEAD . "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";

# variant name => sub returning (list of TCP writes, delay between writes)
my %variant = (
    'chunk-per-event' => sub {
        my @w = ($CHUNKED_HEAD, map { sprintf("%x\r\n", length) . "$_\r\n" } @EVENTS);
        $w[-1] .= "0\r\n\r\n";
        return (\@w, 0.02);
    },
    'every-byte' => sub {
        my $wire = $CHUNKED_HEAD . chunked_wire(\@EVENTS);
        return ([ split //, $wire ], 0.0003);
    },
    'chunks-split-inside-data' => sub {
        my @chunks = cut($BODY, offsets_of($BODY, 'data:', 2));       # "da" | "ta: ..."
        return ([ $CHUNKED_HEAD, map({ sprintf("%x\r\n", length) . "$_\r\n" } @chunks), "0\r\n\r\n" ], 0.02);
    },
    'chunks-split-inside-lflf' => sub {
        my @chunks = cut($BODY, offsets_of($BODY, "\n\n", 1));        # "...\n" | "\n"
        my @w = ($CHUNKED_HEAD, map { sprintf("%x\r\n", length) . "$_\r\n" } @chunks);
        push @w, "0\r\n\r\n";
        return (\@w, 0.02);
    },
    'writes-split-inside-chunk-size-lines' => sub {
        my $wire = chunked_wire(\@EVENTS);
        # cut after the first hex digit of every size line, between every \r and \n
        my @at = (offsets_of($wire, "\r\n", 1));
        my $pos = 0;
        for my $e (@EVENTS) {
            push @at, $pos + 1;                                      # inside the size digits
            $pos += length(sprintf("%x\r\n", length $e)) + length($e) + 2;
        }
        return ([ $CHUNKED_HEAD, cut($wire, @at) ], 0.005);
    },
    'chunks-span-events' => sub {
        my @chunks = $BODY =~ /(.{1,37})/gs;
        my $wire = chunked_wire(\@chunks);
        return ([ $CHUNKED_HEAD, $wire =~ /(.{1,101})/gs ], 0.01);
    },
    'chunks-split-inside-utf8' => sub {
        my @at;
        while ($BODY =~ /([\xc0-\xff])/g) { push @at, pos($BODY) }    # right after a lead byte
        my @chunks = cut($BODY, @at);
        return ([ $CHUNKED_HEAD, map({ sprintf("%x\r\n", length) . "$_\r\n" } @chunks), "0\r\n\r\n" ], 0.01);
    },
    'chunk-extensions-uppercase-hex' => sub {
        my @chunks = $BODY =~ /(.{1,200})/gs;
        return ([ $CHUNKED_HEAD, chunked_wire(\@chunks, upper => 1, ext => 1) =~ /(.{1,64})/gs ], 0.01);
    },
    'one-write' => sub {
        return ([ $CHUNKED_HEAD . chunked_wire(\@EVENTS) ], 0);
    },
    'headers-dribbled' => sub {
        return ([ (split //, $CHUNKED_HEAD), chunked_wire(\@EVENTS) ], 0.001);
    },
    'content-length' => sub {
        my $wire = $HEAD . "Content-Length: " . length($BODY) . "\r\nConnection: close\r\n\r\n" . $BODY;
        my $hl = length($wire) - length($BODY);
        my @at = map { $_ + $hl } (offsets_of($BODY, 'data:', 3), offsets_of($BODY, "\n\n", 1));
        return ([ cut($wire, @at) ], 0.01);
    },
    'close-delimited' => sub {
        my $wire = $HEAD . "Connection: close\r\n\r\n" . $BODY;
        return ([ $wire =~ /(.{1,13})/gs ], 0.002);
    },
    'http10-close-delimited' => sub {
        my $wire = ($HEAD =~ s{^HTTP/1\.1}{HTTP/1.0}r) . "\r\n" . $BODY;
        return ([ $wire =~ /(.{1,29})/gs ], 0.002);
    },
);

# CRLF line endings inside SSE (allowed by the SSE spec)
my @CRLF_EVENTS = map { s/\n\n\z/\r\n\r\n/r } @EVENTS;
$variant{'sse-crlf-line-endings'} = sub {
    my $body = join '', @CRLF_EVENTS;
    my @chunks = cut($body, offsets_of($body, "\r\n\r\n", 1), offsets_of($body, "\r\n\r\n", 3));
    return ([ $CHUNKED_HEAD, map({ sprintf("%x\r\n", length) . "$_\r\n" } @chunks), "0\r\n\r\n" ], 0.01);
};

# timing: one event every 300ms, each event itself written in two halves
$variant{'timing'} = sub {
    my @w = ($CHUNKED_HEAD);
    for my $e (@EVENTS) {
        my $c = sprintf("%x\r\n", length $e) . "$e\r\n";
        my $h = int(length($c) / 2);
        push @w, substr($c, 0, $h), substr($c, $h);
    }
    push @w, "0\r\n\r\n";
    return (\@w, 0.15);
};

# events whose data spans several lines, each chunk ending with the
# "usage":null that the gateway cuts out for a client that did not ask for
# usage: the edited event is written anew, a "data:" field per line
my @ML_EVENTS = (
    "data: {\"id\":\"chatcmpl-ml\",\"object\":\"chat.completion.chunk\",\"created\":1718000000,\n"
  . "data: \"model\":\"gpt-x\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}],\n"
  . "data: \"usage\":null}\n\n",
    "event: chunk\ndata: {\"id\":\"chatcmpl-ml\",\"object\":\"chat.completion.chunk\",\n"
  . "data:\"created\":1718000000,\"model\":\"gpt-x\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-ml\",\"object\":\"chat.completion.chunk\",\"created\":1718000000,\"model\":\"gpt-x\",\n"
  . "data: \"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-ml\",\"object\":\"chat.completion.chunk\",\"created\":1718000000,\"model\":\"gpt-x\",\"choices\":[],\n"
  . "data: \"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1,\"total_tokens\":6}}\n\n",
    "data: [DONE]\n\n",
);
my $ML_BODY = join '', @ML_EVENTS;
my %ml_variant = (
    'ml-one-write' => sub { [ $CHUNKED_HEAD . chunked_wire([ $ML_BODY ]) ] },
    'ml-chunk-per-event' => sub { [ $CHUNKED_HEAD, map { chunked_wire([ $_ ]) =~ s/0\r\n\r\n\z//r } @ML_EVENTS, '' ] },
    'ml-every-byte' => sub { [ split //, $CHUNKED_HEAD . chunked_wire([ $ML_BODY ]) ] },
    'ml-split-inside-lines' => sub {
        my @chunks = cut($ML_BODY, offsets_of($ML_BODY, "\ndata", 1), offsets_of($ML_BODY, '"usage"', 3));
        return [ $CHUNKED_HEAD, chunked_wire(\@chunks) ];
    },
);

my $raw = $t->fake_provider(port => $t->port('RAW'), handler => sub {
    my ($req) = @_;
    my $m = ref $req->{json} eq 'HASH' ? $req->{json}{model} // '' : '';
    if (my $ml = $ml_variant{$m}) {
        return [ [ pieces => $ml->(), 0.002 ], [ 'close' ] ];
    }
    my $v = $variant{$m} or return [ [ send => LLMTest::FakeProvider::http_response(status => 500) ] ];
    my ($writes, $delay) = $v->();
    return [ [ pieces => $writes, $delay ], [ 'close' ] ];
});

$t->run(<<'CONF');
http {
    llm_provider raw { url http://127.0.0.1:%%PORT_RAW%%/v1; key k; read_timeout 10s; }
    server {
        listen 127.0.0.1:%%PORT_GW%%;
        location /v1/ { llm_pass raw; }
    }
}
CONF

my $gw = $t->port('GW');
my $msgs = [ { role => 'user', content => 'Hi' } ];

sub run_variant {
    my ($name) = @_;
    my $s = LLMTest::HTTP::Stream->open(port => $gw, path => '/v1/chat/completions', timeout => 15,
        body => { model => $name, messages => $msgs, stream => JSON::PP::true });
    $s->read_all(15);
    return $s;
}

for my $name (grep { $_ ne 'timing' && $_ ne 'sse-crlf-line-endings' } sort keys %variant) {
    my $s = run_variant($name);
    is($s->{status}, 200, "$name: 200");
    like($s->{headers}{'content-type'} // '', qr{^text/event-stream}, "$name: Content-Type text/event-stream");
    ok($s->complete, "$name: client response properly terminated") or diag($s->body_error // 'timeout');
    my $got = $s->body;
    ok($got eq $BODY, "$name: client received exactly the provider's event bytes")
        or diag_diff($got, $BODY);
    is(scalar @{$s->events}, scalar @EVENTS, "$name: " . scalar(@EVENTS) . ' events, in order');
}

{
    my $name = 'sse-crlf-line-endings';
    my $s = run_variant($name);
    is($s->{status}, 200, "$name: 200");
    ok($s->complete, "$name: client response properly terminated");
    is_deeply([ $s->data_payloads ], [ LLMTest::HTTP::parse_sse_events($BODY) ],
              "$name: the same event payloads, in order");
    diag("$name: bytes " . ($s->body eq join('', @CRLF_EVENTS) ? 'forwarded verbatim' : 'normalized'));
}

{
    my $s = run_variant('timing');
    my @ev = @{$s->events};
    is(join('', map { $_->{data} } @ev), $BODY, 'timing: all events received');
    if (@ev == @EVENTS) {
        # the provider needs 11 x 150ms = 1.65s to send the stream
        cmp_ok($ev[-1]{t} - $ev[0]{t}, '>=', 1.0,
               'timing: first event arrived >= 1s before the last: events are not buffered');
        my @gaps = map { sprintf '%.3f', $ev[$_]{t} - $ev[$_ - 1]{t} } 1 .. $#ev;
        cmp_ok(scalar(grep { $_ >= 0.15 } @gaps), '>=', 4, 'timing: events arrive one at a time')
            or diag("gaps: @gaps");
    }
}

# multi-line data: the client gets each chunk without its usage member,
# every line of the edited data as a "data:" field, and no usage chunk
{
    my @want = map { my $d = $_; $d =~ s/,\n?"usage":null\}\z/}/; $d }
               grep { !/"choices":\[\],/ } LLMTest::HTTP::parse_sse_events($ML_BODY);
    for my $name (sort keys %ml_variant) {
        my $s = run_variant($name);
        is($s->{status}, 200, "$name: 200");
        ok($s->complete, "$name: client response properly terminated") or diag($s->body_error // 'timeout');
        my @got = $s->data_payloads;
        is_deeply(\@got, \@want, "$name: every chunk whole, without its usage, and no usage chunk")
            or diag(explain \@got);
        my @bad = grep { !/^(?:data|event):/ } grep { length } split /\n/, $s->body;
        ok(!@bad, "$name: every line the client got is a field of an event") or diag(explain \@bad);
        is(scalar(grep { /^event: chunk$/m } split /\n\n/, $s->body), 1, "$name: the event name is kept");
    }
}

sub diag_diff {
    my ($got, $want) = @_;
    my $i = 0;
    $i++ while $i < length $got && $i < length $want && substr($got, $i, 1) eq substr($want, $i, 1);
    diag(sprintf "got %d bytes, expected %d; first difference at byte %d:\n got: %s\nwant: %s",
         length $got, length $want, $i,
         json_encode(substr($got, $i > 20 ? $i - 20 : 0, 60)),
         json_encode(substr($want, $i > 20 ? $i - 20 : 0, 60)));
}

$t->finish;
done_testing;
