#!/usr/bin/perl
# llm_mock on its own: an OpenAI-compatible fake provider with fault injection.

use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use LLMTest;
use Time::HiRes qw(time sleep);

my $t = LLMTest->new;
$t->run(<<'CONF');
http {
    server {
        listen 127.0.0.1:%%PORT_MOCK%%;
        location /v1/       { llm_mock; }
        location /c2/v1/    { llm_mock chunks=2; }
        location /slow/v1/  { llm_mock delay=300ms; }
        location /keyed/v1/ { llm_mock key=s3cret; }
    }
}
CONF

my $port = $t->port('MOCK');
my $TEXT = mock_text();
my $C    = ceil4(length $TEXT);

sub chat {
    my (%a) = @_;
    my $path = delete $a{path} // '/v1/chat/completions';
    return http_request(port => $port, method => 'POST', path => $path, %a);
}

sub stream {
    my (%a) = @_;
    my $path = delete $a{path} // '/v1/chat/completions';
    my $body = delete $a{body};
    my $s = LLMTest::HTTP::Stream->open(port => $port, path => $path, body => $body, %a);
    $s->read_all(10);
    return $s;
}

my $msgs = [ { role => 'user', content => 'Hello world!' } ];    # 12 bytes -> 3 tokens

# ---------------------------------------------------------------------------
# non-streaming chat completion

{
    my $t0 = time;
    my $r = chat(body => { model => 'gpt-test', messages => $msgs });
    is($r->{status}, 200, 'chat: 200');
    like($r->{headers}{'content-type'} // '', qr{^application/json}, 'chat: Content-Type application/json');
    my $j = $r->{json} // {};
    like($j->{id} // '', qr/^chatcmpl-mock-\d+$/, 'chat: id chatcmpl-mock-N');
    is($j->{object}, 'chat.completion', 'chat: object');
    ok(defined $j->{created} && $j->{created} =~ /^\d+$/ && abs($j->{created} - $t0) < 60,
       'chat: created is the current unix time');
    is($j->{model}, 'gpt-test', 'chat: model echoed from the request');
    my $c = ref $j->{choices} eq 'ARRAY' ? $j->{choices} : [];
    is(scalar @$c, 1, 'chat: one choice');
    is_deeply([ @{$c->[0] // {}}{qw(index message finish_reason)} ],
              [ 0, { role => 'assistant', content => $TEXT }, 'stop' ],
              'chat: choices[0] is the fixed assistant message, finish_reason stop')
        or diag($r->{body});
    is_deeply($j->{usage}, { prompt_tokens => 3, completion_tokens => $C, total_tokens => 3 + $C },
              'chat: usage = ceil(12/4) prompt, ceil(len(TEXT)/4) completion');
}

# prompt tokens: all messages, array content text parts, bytes (not characters)
{
    my $r = chat(body => { model => 'm', messages => [
        { role => 'system', content => 'abcd' },                       # 4
        { role => 'user', content => [
            { type => 'text', text => 'hello' },                       # 5
            { type => 'image_url', image_url => { url => 'http://x.test/a-very-long-url.png' } },
            { type => 'text', text => 'xyz' },                         # 3
        ] },
        { role => 'assistant', content => 'ok' },                      # 2
    ] });                                                              # 14 -> 4
    is($r->{json}{usage}{prompt_tokens}, 4,
       'chat: prompt_tokens counts every message and only text parts of array content');

    my $utf8 = "\xc3\xa9" x 6;    # "é" x 6: 6 characters, 12 bytes -> 3 tokens
    $r = http_request(port => $port, method => 'POST', path => '/v1/chat/completions',
                      headers => [ 'Content-Type' => 'application/json' ],
                      body => qq({"model":"m","messages":[{"role":"user","content":"$utf8"}]}));
    is($r->{status}, 200, 'chat: UTF-8 content accepted');
    is($r->{json}{usage}{prompt_tokens}, 3, 'chat: prompt_tokens counts bytes, not characters');
}

# ---------------------------------------------------------------------------
# streaming

# check a complete mock stream; returns the list of decoded chunks
sub check_stream {
    my ($s, $name, %e) = @_;
    my $chunks = $e{chunks} // 4;
    is($s->{status}, 200, "$name: 200");
    like($s->{headers}{'content-type'} // '', qr{^text/event-stream}, "$name: Content-Type text/event-stream");
    ok($s->complete, "$name: response body properly terminated") or diag($s->body_error // 'timeout');
    my @ev = map { $_->{data} } @{$s->events};
    my @bad = grep { $_ !~ /\Adata: \{.*\}\n\n\z/s && $_ ne "data: [DONE]\n\n" } @ev;
    ok(!@bad, "$name: every event is 'data: {json}\\n\\n'") or diag(explain \@bad);
    is($s->leftover, '', "$name: no bytes after the last event");
    is($ev[-1], "data: [DONE]\n\n", "$name: [DONE] is the last event");
    my @j = map { json_decode(substr($_, 6)) } grep { $_ ne "data: [DONE]\n\n" } @ev;
    my $want = 1 + $chunks + 1 + ($e{usage} ? 1 : 0);
    is(scalar @j, $want, "$name: $want JSON chunks (role, $chunks content, stop"
       . ($e{usage} ? ', usage' : '') . ')');
    is(scalar(grep { ref $_ eq 'HASH' } @j), scalar @j, "$name: every chunk is a JSON object");
    return @j unless @j == $want;

    my @bad_obj = grep { ($_->{object} // '') ne 'chat.completion.chunk' } @j;
    ok(!@bad_obj, "$name: object is chat.completion.chunk");
    my @bad_model = grep { ($_->{model} // '') ne $e{model} } @j;
    ok(!@bad_model, "$name: every chunk carries model $e{model}");

    is_deeply($j[0]{choices}[0]{delta}, { role => 'assistant', content => '' },
              "$name: first chunk delta is {role: assistant, content: ''}");
    my @pieces = map { $_->{choices}[0]{delta}{content} } @j[1 .. $chunks];
    is(scalar(grep { defined && length } @pieces), $chunks, "$name: $chunks non-empty content pieces");
    is(join('', map { $_ // '' } @pieces), $TEXT, "$name: content pieces concatenate to the mock text");
    my $stop = $j[$chunks + 1];
    is_deeply($stop->{choices}[0]{delta}, {}, "$name: stop chunk has an empty delta");
    is($stop->{choices}[0]{finish_reason}, 'stop', "$name: stop chunk finish_reason stop");
    if ($e{usage}) {
        my $u = $j[-1];
        is_deeply($u->{choices}, [], "$name: usage chunk has choices []");
        is_deeply($u->{usage}, { prompt_tokens => $e{prompt}, completion_tokens => $C,
                                 total_tokens => $e{prompt} + $C }, "$name: usage chunk numbers");
    } else {
        my @u = grep { defined $_->{usage} || (ref $_->{choices} eq 'ARRAY' && !@{$_->{choices}}) } @j;
        ok(!@u, "$name: no usage chunk when include_usage is not requested");
    }
    return @j;
}

{
    my $s = stream(body => { model => 'gpt-s', stream => JSON::PP::true, messages => $msgs });
    check_stream($s, 'stream default', model => 'gpt-s');

    $s = stream(body => { model => 'gpt-s', stream => JSON::PP::true, messages => $msgs,
                          stream_options => { include_usage => JSON::PP::false } });
    check_stream($s, 'stream include_usage=false', model => 'gpt-s');

    $s = stream(body => { model => 'gpt-u', stream => JSON::PP::true, messages => $msgs,
                          stream_options => { include_usage => JSON::PP::true } });
    check_stream($s, 'stream include_usage=true', model => 'gpt-u', usage => 1, prompt => 3);

    $s = stream(path => '/c2/v1/chat/completions',
                body => { model => 'gpt-c', stream => JSON::PP::true, messages => $msgs });
    check_stream($s, 'stream chunks=2', model => 'gpt-c', chunks => 2);

    $s = stream(headers => [ 'X-Mock-Chunks' => 7 ],
                body => { model => 'gpt-c', stream => JSON::PP::true, messages => $msgs });
    check_stream($s, 'stream X-Mock-Chunks: 7', model => 'gpt-c', chunks => 7);

    $s = stream(path => '/c2/v1/chat/completions', headers => [ 'X-Mock-Chunks' => 5 ],
                body => { model => 'gpt-c', stream => JSON::PP::true, messages => $msgs });
    check_stream($s, 'stream X-Mock-Chunks overrides chunks=', model => 'gpt-c', chunks => 5);
}

# delay=300ms: events are produced 300ms apart and delivered as produced
{
    my $s = stream(path => '/slow/v1/chat/completions',
                   body => { model => 'gpt-slow', stream => JSON::PP::true, messages => $msgs });
    check_stream($s, 'stream delay=300ms', model => 'gpt-slow');
    my @ev = @{$s->events};
    if (@ev == 7) {
        my $spread = $ev[-1]{t} - $ev[0]{t};
        cmp_ok($spread, '>=', 1.2, 'delay=300ms: first event arrived well before the last (6 x 300ms)');
        cmp_ok($ev[1]{t} - $ev[0]{t}, '>=', 0.15, 'delay=300ms: events arrive one by one');
    } else {
        fail('delay=300ms: 7 events') for 1 .. 2;
    }

    $s = stream(headers => [ 'X-Mock-Chunks' => 2, 'X-Mock-Chunk-Delay' => 250 ],
                body => { model => 'gpt-slow', stream => JSON::PP::true, messages => $msgs });
    check_stream($s, 'stream X-Mock-Chunk-Delay: 250', model => 'gpt-slow', chunks => 2);
    @ev = @{$s->events};
    cmp_ok($ev[-1]{t} - $ev[0]{t}, '>=', 0.75, 'X-Mock-Chunk-Delay: 4 gaps of 250ms between 5 events')
        if @ev == 5;
}

# ---------------------------------------------------------------------------
# embeddings

{
    my $r = http_request(port => $port, method => 'POST', path => '/v1/embeddings',
                         body => { model => 'emb-1', input => 'hello world' });
    is($r->{status}, 200, 'embeddings: 200');
    like($r->{headers}{'content-type'} // '', qr{^application/json}, 'embeddings: Content-Type application/json');
    my $j = $r->{json} // {};
    is($j->{object}, 'list', 'embeddings: object list');
    is($j->{model}, 'emb-1', 'embeddings: model echoed');
    is(scalar @{$j->{data} // []}, 1, 'embeddings: one item for a string input');
    my $d = $j->{data}[0] // {};
    is($d->{object}, 'embedding', 'embeddings: item object embedding');
    is($d->{index}, 0, 'embeddings: item index 0');
    ok(ref $d->{embedding} eq 'ARRAY' && @{$d->{embedding}} == 8
       && !grep({ !/^-?\d+(\.\d+)?([eE][-+]?\d+)?$/ } @{$d->{embedding}}),
       'embeddings: 8 floats');
    ok(defined $j->{usage}{prompt_tokens} && $j->{usage}{prompt_tokens} =~ /^\d+$/
       && $j->{usage}{prompt_tokens} > 0, 'embeddings: usage.prompt_tokens is a positive integer');
    is($j->{usage}{total_tokens}, $j->{usage}{prompt_tokens}, 'embeddings: total_tokens = prompt_tokens');

    $r = http_request(port => $port, method => 'POST', path => '/v1/embeddings',
                      body => { model => 'emb-1', input => [ 'a', 'bb', 'ccc' ] });
    $j = $r->{json} // {};
    is_deeply([ map { $_->{index} } @{$j->{data} // []} ], [ 0, 1, 2 ],
              'embeddings: array input gives one item per input, indexed 0..2');
}

# ---------------------------------------------------------------------------
# key=

{
    my $body = { model => 'm', messages => $msgs };
    my $r = chat(path => '/keyed/v1/chat/completions', body => $body);
    error_ok($r, 401, 'invalid_api_key', 'key=: no Authorization -> 401 invalid_api_key');
    $r = chat(path => '/keyed/v1/chat/completions', body => $body,
              headers => [ Authorization => 'Bearer wrong' ]);
    error_ok($r, 401, 'invalid_api_key', 'key=: wrong key -> 401 invalid_api_key');
    $r = chat(path => '/keyed/v1/chat/completions', body => $body,
              headers => [ Authorization => 's3cret' ]);
    error_ok($r, 401, 'invalid_api_key', 'key=: key without "Bearer " -> 401');
    $r = chat(path => '/keyed/v1/chat/completions', body => $body,
              headers => [ Authorization => 'Bearer s3cret' ]);
    is($r->{status}, 200, 'key=: right key -> 200');
    $r = http_request(port => $port, method => 'POST', path => '/keyed/v1/embeddings',
                      body => { model => 'e', input => 'x' });
    error_ok($r, 401, 'invalid_api_key', 'key=: embeddings without key -> 401');
}

# ---------------------------------------------------------------------------
# fault injection

my $body = { model => 'm', messages => $msgs };
my $sbody = { model => 'm', messages => $msgs, stream => JSON::PP::true };

for my $st (429, 500, 503) {
    my $r = chat(body => $body, headers => [ 'X-Mock-Status' => $st ]);
    error_ok($r, $st, undef, "X-Mock-Status: $st -> $st with an OpenAI-style error body");
    if ($st == 429) {
        is($r->{headers}{'retry-after'}, '1', 'X-Mock-Status: 429 adds Retry-After: 1');
    } else {
        ok(!defined $r->{headers}{'retry-after'}, "X-Mock-Status: $st has no Retry-After");
    }
}
{
    my $r = chat(body => $sbody, headers => [ 'X-Mock-Status' => 500 ]);
    error_ok($r, 500, undef, 'X-Mock-Status: 500 on a streaming request -> 500 JSON error');
}

{
    my $r = chat(body => $body, headers => [ 'X-Mock-Delay' => 600 ]);
    is($r->{status}, 200, 'X-Mock-Delay: 600 -> 200');
    cmp_ok($r->{time}, '>=', 0.55, 'X-Mock-Delay: 600 -> response after >= 600ms');
}

# X-Mock-Stall, streaming: the first N events, then nothing, connection open
{
    my $s = LLMTest::HTTP::Stream->open(port => $port, path => '/v1/chat/completions',
                                        body => $sbody, headers => [ 'X-Mock-Stall' => 2 ]);
    is($s->{status}, 200, 'X-Mock-Stall: 2 (stream): 200');
    my @got;
    while (my $ev = $s->next_event(1.0)) { push @got, $ev }
    is(scalar @got, 2, 'X-Mock-Stall: 2 (stream): exactly 2 events, then silence');
    ok($s->timed_out && !$s->finished, 'X-Mock-Stall: 2 (stream): connection stays open');
    $s->close;
}

# X-Mock-Stall, non-streaming: the header and half the body, then stall
{
    my $r = chat(body => $body, headers => [ 'X-Mock-Stall' => 1 ], timeout => 1.5, keep_conn => 1);
    is($r->{status}, 200, 'X-Mock-Stall (non-stream): response header sent');
    ok(!$r->{complete}, 'X-Mock-Stall (non-stream): body incomplete, connection stalls')
        or diag($r->{body});
    ok(length $r->{body} > 0, 'X-Mock-Stall (non-stream): part of the body was sent');
    ok(!defined json_decode($r->{body}), 'X-Mock-Stall (non-stream): partial body is not valid JSON');
    close $r->{conn}{sock} if $r->{conn};
}

# X-Mock-Malformed
{
    my $r = chat(body => $body, headers => [ 'X-Mock-Malformed' => 1 ]);
    is($r->{status}, 200, 'X-Mock-Malformed (non-stream): 200');
    ok($r->{complete} && length $r->{body}, 'X-Mock-Malformed (non-stream): complete non-empty body');
    ok(!defined json_decode($r->{body}), 'X-Mock-Malformed (non-stream): body is not valid JSON');

    my $s = stream(body => $sbody, headers => [ 'X-Mock-Malformed' => 1 ]);
    is($s->{status}, 200, 'X-Mock-Malformed (stream): 200');
    my @p = $s->data_payloads;
    ok((grep { /^\{broken/ } @p), 'X-Mock-Malformed (stream): a "data: {broken" event')
        or diag(explain \@p);
    is($p[-1], '[DONE]', 'X-Mock-Malformed (stream): then [DONE]');
    ok($s->complete, 'X-Mock-Malformed (stream): body properly terminated');
}

# the mock still works after all of this
{
    my $r = chat(body => $body);
    is($r->{status}, 200, 'mock still answers after the fault tests');
}

$t->finish;
done_testing;
