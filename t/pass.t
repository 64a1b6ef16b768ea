#!/usr/bin/perl
# llm_pass in front of llm_mock (and in front of a raw fake provider that
# records exactly what the gateway sends).

use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use LLMTest;
use Time::HiRes qw(time sleep);

my $t = LLMTest->new;
$t->write_file('provider.key', "  s3cret \n");
$ENV{LLM_TEST_PASS_KEY} = 's3cret';

my $raw = $t->fake_provider(port => $t->port('RAW'), handler => sub {
    my ($req) = @_;
    my $model = ref $req->{json} eq 'HASH' ? $req->{json}{model} // '' : '';
    my $body = json_encode({
        id => 'chatcmpl-raw', object => 'chat.completion', created => 1, model => $model,
        choices => [ { index => 0, message => { role => 'assistant', content => 'raw says hi' },
                       finish_reason => 'stop' } ],
        usage => { prompt_tokens => 1, completion_tokens => 2, total_tokens => 3 },
    });
    return [ [ send => LLMTest::FakeProvider::http_response(
        status => 200, headers => [ 'Content-Type' => 'application/json' ], body => $body) ] ];
});

$t->run(<<'CONF');
http {
    log_format llm '$http_x_test_id|$llm_provider|$llm_route|$llm_model|$llm_upstream_model|$llm_stream|$llm_error|$llm_upstream_status|$status';

    llm_provider mock1 {
        url http://127.0.0.1:%%PORT_MOCK%%/v1;
        key sk-mock1;
        model gpt-4o gpt-4o-2024-08-06;
        model mini;
        model embed text-embedding-3-small;
    }
    llm_provider mock2 {
        url http://127.0.0.1:%%PORT_MOCK%%/v1;
        key sk-mock2;
        model other other-model;
    }
    llm_provider anymodel { url http://127.0.0.1:%%PORT_MOCK%%/v1; key sk-any; }
    llm_provider keyed    { url http://127.0.0.1:%%PORT_MOCK%%/keyed/v1; key s3cret; }
    llm_provider badkey   { url http://127.0.0.1:%%PORT_MOCK%%/keyed/v1; key not-the-key; }
    llm_provider filekey  { url http://127.0.0.1:%%PORT_MOCK%%/keyed/v1; key_file %%DIR%%/provider.key; }
    llm_provider envkey   { url http://127.0.0.1:%%PORT_MOCK%%/keyed/v1; key_env LLM_TEST_PASS_KEY; }
    llm_provider raw {
        url http://127.0.0.1:%%PORT_RAW%%/base/v1;
        key sk-raw;
        model fancy fancy-upstream-v2;
        header X-Org org-42;
        header X-Project proj-7;
    }
    llm_provider rawhost {
        url http://127.0.0.1:%%PORT_RAW%%/v1;
        key sk-raw2;
        host provider.example;
    }

    llm_route main  { provider mock1; }
    llm_route multi { provider mock1; provider mock2; }

    server {
        listen 127.0.0.1:%%PORT_MOCK%%;
        location /v1/       { llm_mock; }
        location /keyed/v1/ { llm_mock key=s3cret; }
    }

    server {
        listen 127.0.0.1:%%PORT_GW%%;
        access_log %%DIR%%/gw.log llm;

        location /v1/         { llm_pass main; }
        location /multi/v1/   { llm_pass multi; }
        location /any/v1/     { llm_pass anymodel; }
        location /keyed/v1/   { llm_pass keyed; }
        location /badkey/v1/  { llm_pass badkey; }
        location /filekey/v1/ { llm_pass filekey; }
        location /envkey/v1/  { llm_pass envkey; }
        location /plain       { return 200 "plain\n"; }
        location /raw/v1/     { llm_pass raw; }
        location /rawhost/v1/ { llm_pass rawhost; }
        location /nohdr/v1/   { llm_pass raw; llm_pass_request_headers off; }
        location /small/v1/   { llm_pass main; client_max_body_size 1k; }
    }
}
CONF

my $gw   = $t->port('GW');
my $mock = $t->port('MOCK');
my $TEXT = mock_text();
my $msgs = [ { role => 'user', content => 'Hello world!' } ];
my $TRUE = JSON::PP::true;

sub gw {
    my (%a) = @_;
    $a{method} //= 'POST';
    return http_request(port => $gw, %a);
}

sub gw_stream {
    my (%a) = @_;
    my $s = LLMTest::HTTP::Stream->open(port => $gw, %a);
    $s->read_all(10);
    return $s;
}

# ---------------------------------------------------------------------------
# chat, non-streaming and streaming

{
    my $r = gw(path => '/v1/chat/completions', headers => [ 'X-Test-Id' => 'chat' ],
               body => { model => 'gpt-4o', messages => $msgs });
    is($r->{status}, 200, 'chat: 200 through the gateway');
    like($r->{headers}{'content-type'} // '', qr{^application/json}, 'chat: Content-Type application/json');
    my $j = $r->{json} // {};
    is($j->{object}, 'chat.completion', 'chat: chat.completion object');
    is($j->{choices}[0]{message}{content}, $TEXT, 'chat: mock text');
    is($j->{model}, 'gpt-4o-2024-08-06', 'chat: alias gpt-4o rewritten to the provider model (echoed by the mock)');
    is_deeply($j->{usage}, { prompt_tokens => 3, completion_tokens => ceil4(length $TEXT),
                             total_tokens => 3 + ceil4(length $TEXT) }, 'chat: usage passed through');

    $r = gw(path => '/v1/chat/completions', body => { model => 'mini', messages => $msgs });
    is($r->{json}{model}, 'mini', 'chat: alias without a NAME is sent as-is');

    $r = gw(path => '/any/v1/chat/completions', body => { model => 'whatever-model-7', messages => $msgs });
    is($r->{status}, 200, 'chat: provider without models accepts any model');
    is($r->{json}{model}, 'whatever-model-7', 'chat: ... and sends it unchanged');
}

{
    my $s = gw_stream(path => '/v1/chat/completions', headers => [ 'X-Test-Id' => 'stream' ],
                      body => { model => 'gpt-4o', messages => $msgs, stream => $TRUE });
    is($s->{status}, 200, 'stream: 200');
    like($s->{headers}{'content-type'} // '', qr{^text/event-stream}, 'stream: Content-Type text/event-stream');
    ok($s->complete, 'stream: response properly terminated') or diag($s->body_error // 'timeout');
    my @p = $s->data_payloads;
    is(scalar @p, 7, 'stream: 7 events (role, 4 content, stop, [DONE])') or diag(explain \@p);
    is($p[-1], '[DONE]', 'stream: [DONE] last');
    my @j = map { json_decode($_) } @p[0 .. $#p - 1];
    is(join('', map { ref $_ ? $_->{choices}[0]{delta}{content} // '' : '' } @j), $TEXT,
       'stream: content deltas concatenate to the mock text');
    ok(!grep({ !ref $_ || ($_->{model} // '') ne 'gpt-4o-2024-08-06' } @j),
       'stream: every chunk shows the provider model');
    like($s->body, qr/\A(data: [^\n]*\n\n)+\z/, 'stream: body is a sequence of SSE events');

    $s = gw_stream(path => '/v1/chat/completions',
                   body => { model => 'gpt-4o', messages => $msgs, stream => $TRUE,
                             stream_options => { include_usage => $TRUE } });
    @p = $s->data_payloads;
    my ($u) = grep { ref $_ && $_->{usage} } map { json_decode($_) } @p;
    ok($u && $u->{usage}{prompt_tokens} == 3, 'stream: include_usage usage chunk passed through');
}

# streaming delivery: events must reach the client as the provider produces them
{
    my $t0 = time;
    my $s = gw_stream(path => '/v1/chat/completions',
                      headers => [ 'X-Mock-Chunk-Delay' => 300 ],
                      body => { model => 'gpt-4o', messages => $msgs, stream => $TRUE });
    my @ev = @{$s->events};
    is(scalar @ev, 7, 'stream timing: 7 events with 300ms between them');
    if (@ev == 7) {
        cmp_ok($ev[-1]{t} - $ev[0]{t}, '>=', 1.2,
               'stream timing: first event arrived >= 1.2s before the last (not buffered)');
        my @gaps = map { $ev[$_]{t} - $ev[$_ - 1]{t} } 1 .. $#ev;
        my $spread = grep { $_ >= 0.15 } @gaps;
        cmp_ok($spread, '>=', 5, 'stream timing: events arrive one at a time (>= 5 gaps of >= 150ms)')
            or diag("gaps: @gaps");
    }
}

# ---------------------------------------------------------------------------
# embeddings and models

{
    my $r = gw(path => '/v1/embeddings', body => { model => 'embed', input => 'hello' });
    is($r->{status}, 200, 'embeddings: 200');
    my $j = $r->{json} // {};
    is($j->{object}, 'list', 'embeddings: list');
    is($j->{model}, 'text-embedding-3-small', 'embeddings: alias rewritten');
    is(scalar @{$j->{data}[0]{embedding} // []}, 8, 'embeddings: 8 floats');

    $r = gw(path => '/v1/embeddings', body => { model => 'nope', input => 'hello' });
    error_ok($r, 404, 'model_not_found', 'embeddings: unknown model -> 404 model_not_found');
    $r = gw(path => '/v1/embeddings', body => { input => 'hello' });
    error_ok($r, 400, 'missing_model', 'embeddings: missing model -> 400 missing_model');
    $r = gw(path => '/v1/embeddings', body => '{"model":', headers => [ 'Content-Type' => 'application/json' ]);
    error_ok($r, 400, 'invalid_json', 'embeddings: invalid JSON -> 400 invalid_json');
}

{
    my $r = gw(method => 'GET', path => '/multi/v1/models');
    is($r->{status}, 200, 'models: 200');
    like($r->{headers}{'content-type'} // '', qr{^application/json}, 'models: Content-Type application/json');
    my $j = $r->{json} // {};
    is($j->{object}, 'list', 'models: object list');
    my %got = map { $_->{id} => $_ } @{$j->{data} // []};
    is_deeply([ sort keys %got ], [ sort qw(gpt-4o mini embed other) ],
              'models: every alias of the route providers') or diag($r->{body});
    is_deeply($got{'gpt-4o'}, { id => 'gpt-4o', object => 'model', created => 0, owned_by => 'mock1' },
              'models: entry shape, owned_by the provider');
    is($got{other}{owned_by}, 'mock2', 'models: owned_by the second provider');

    $r = gw(method => 'GET', path => '/any/v1/models');
    is($r->{status}, 200, 'models: provider without models: 200');
    is_deeply($r->{json}, { object => 'list', data => [] }, 'models: provider without models: empty list');

    $r = gw(method => 'GET', path => '/v1/models');
    is_deeply([ sort map { $_->{id} } @{$r->{json}{data} // []} ], [ sort qw(gpt-4o mini embed) ],
              'models: one-provider route');
}

# a route with two providers sends each model to the provider that serves it
{
    my %seen;
    for (1 .. 4) {
        for my $m (qw(gpt-4o other)) {
            my $r = gw(path => '/multi/v1/chat/completions', headers => [ 'X-Test-Id' => "multi-$m" ],
                       body => { model => $m, messages => $msgs });
            $seen{$m}{$r->{status} == 200 ? $r->{json}{model} // 'none' : "status $r->{status}"}++;
        }
    }
    is_deeply(\%seen, { 'gpt-4o' => { 'gpt-4o-2024-08-06' => 4 }, other => { 'other-model' => 4 } },
              'multi route: each model always goes to the provider that declares it');
}

# ---------------------------------------------------------------------------
# client errors produced by the gateway

{
    my $p = '/v1/chat/completions';
    my @cases = (
        [ 'invalid JSON',           '{"model": "gpt-4o", "messages": [',               400, 'invalid_json' ],
        [ 'empty body',             '',                                                400, 'invalid_json' ],
        [ 'JSON array, not object', '[{"model":"gpt-4o"}]',                            400, 'invalid_json' ],
        [ 'JSON string, not object','"hello"',                                         400, 'invalid_json' ],
        [ 'missing model',          '{"messages":[{"role":"user","content":"x"}]}',    400, 'missing_model' ],
        [ 'model not a string',     '{"model":42,"messages":[{"role":"user","content":"x"}]}', 400, 'missing_model' ],
        [ 'missing messages',       '{"model":"gpt-4o"}',                              400, 'invalid_messages' ],
        [ 'empty messages',         '{"model":"gpt-4o","messages":[]}',                400, 'invalid_messages' ],
        [ 'messages not an array',  '{"model":"gpt-4o","messages":"hi"}',              400, 'invalid_messages' ],
        [ 'unknown model',          '{"model":"nope","messages":[{"role":"user","content":"x"}]}', 404, 'model_not_found' ],
    );
    for my $c (@cases) {
        my ($name, $body, $st, $code) = @$c;
        my $r = gw(path => $p, body => $body, headers => [ 'Content-Type' => 'application/json',
                                                           'X-Test-Id' => "err-$code" ]);
        error_ok($r, $st, $code, "chat: $name -> $st $code");
    }

    my $r = gw(path => '/v1/completions', body => { model => 'gpt-4o', prompt => 'x' });
    error_ok($r, 404, 'unknown_url', 'POST /v1/completions -> 404 unknown_url');
    $r = gw(method => 'GET', path => '/v1/nothing/here');
    error_ok($r, 404, 'unknown_url', 'GET /v1/nothing/here -> 404 unknown_url');
    $r = gw(path => '/v1/chat/completions/extra', body => { model => 'gpt-4o', messages => $msgs });
    error_ok($r, 404, 'unknown_url', 'POST /v1/chat/completions/extra -> 404 unknown_url');

    $r = gw(method => 'GET', path => '/v1/chat/completions');
    error_ok($r, 405, 'method_not_allowed', 'GET /v1/chat/completions -> 405 method_not_allowed');
    like($r->{headers}{allow} // '', qr/\bPOST\b/, '405 for chat/completions has Allow: POST');
    $r = gw(method => 'PUT', path => '/v1/embeddings', body => { model => 'embed', input => 'x' });
    error_ok($r, 405, 'method_not_allowed', 'PUT /v1/embeddings -> 405');
    like($r->{headers}{allow} // '', qr/\bPOST\b/, '405 for embeddings has Allow: POST');
    $r = gw(method => 'POST', path => '/v1/models', body => {});
    error_ok($r, 405, 'method_not_allowed', 'POST /v1/models -> 405');
    like($r->{headers}{allow} // '', qr/\bGET\b/, '405 for models has Allow: GET');

    my $big = { model => 'gpt-4o', messages => [ { role => 'user', content => 'x' x 2048 } ] };
    $r = gw(path => '/small/v1/chat/completions', body => $big, headers => [ 'X-Test-Id' => 'too-large' ]);
    error_ok($r, 413, 'request_too_large', 'body over client_max_body_size (Content-Length) -> 413 request_too_large');
    $r = gw(path => '/small/v1/chat/completions', body => $big, chunked => 1);
    error_ok($r, 413, 'request_too_large', 'body over client_max_body_size (chunked) -> 413 request_too_large');
    $r = gw(path => '/small/v1/chat/completions', body => { model => 'gpt-4o', messages => $msgs });
    is($r->{status}, 200, 'small body under client_max_body_size -> 200');
}

# ---------------------------------------------------------------------------
# provider key injection, client Authorization replaced

{
    my $body = { model => 'm', messages => $msgs };
    my $r = gw(path => '/keyed/v1/chat/completions', body => $body,
               headers => [ Authorization => 'Bearer client-key-123' ]);
    is($r->{status}, 200, 'keyed mock accepts the provider key although the client sent its own Authorization');
    $r = gw(path => '/keyed/v1/chat/completions', body => $body);
    is($r->{status}, 200, 'keyed mock: provider key injected when the client sends none');
    $r = gw(path => '/badkey/v1/chat/completions', body => $body,
            headers => [ Authorization => 'Bearer s3cret' ]);
    is($r->{status}, 401, 'wrong provider key: the client Authorization (even the right secret) is not used');
    is($r->{json}{error}{code}, 'invalid_api_key', "wrong provider key: the provider's 401 body is passed through");
    $r = gw(path => '/filekey/v1/chat/completions', body => $body);
    is($r->{status}, 200, 'key_file: the first line of the file, trimmed, is the provider key');
    $r = gw(path => '/envkey/v1/chat/completions', body => $body);
    is($r->{status}, 200, 'key_env: the variable from the environment of nginx is the provider key');
}

# ---------------------------------------------------------------------------
# what exactly reaches the provider (raw fake provider)

{
    my $client_body = { model => 'fancy', messages => $msgs, temperature => 0.25, user => 'u-1',
                        x_custom => { nested => [ 1, 2, 3 ] } };
    my $r = gw(path => '/raw/v1/chat/completions', body => $client_body, headers => [
        Authorization         => 'Bearer client-secret-key',
        Cookie                => 'session=client-cookie-value',
        'X-Api-Key'           => 'client-x-api-key',
        'Api-Key'             => 'client-api-key',
        'Proxy-Authorization' => 'Basic client-proxy-auth',
        'Accept-Encoding'     => 'gzip, br',
        'X-Trace-Id'          => 'trace-77',
    ]);
    is($r->{status}, 200, 'raw: 200');
    is($r->{json}{choices}[0]{message}{content}, 'raw says hi', 'raw: provider response passed back');

    my $q = $raw->last_request;
    ok($q, 'raw: the provider received a request') or BAIL_OUT('no request recorded');
    like($q->{request_line}, qr{^POST /base/v1/chat/completions HTTP/1\.[01]$},
         'raw: POST to provider base path + /chat/completions');
    my @auth = grep { lc $_->[0] eq 'authorization' } @{$q->{header_lines}};
    is(scalar @auth, 1, 'raw: exactly one Authorization header');
    is($q->{headers}{authorization}, 'Bearer sk-raw', 'raw: Authorization: Bearer <provider key>');
    unlike($q->{raw}, qr/client-secret-key/, "raw: the client's Authorization value never reaches the provider");
    like($q->{headers}{host} // '', qr/^127\.0\.0\.1(:$raw->{port})?$/, 'raw: Host is the host of the url');
    ok(!exists $q->{headers}{cookie}, 'raw: no Cookie');
    unlike($q->{raw}, qr/client-cookie-value/, 'raw: cookie value not sent anywhere');
    ok(!exists $q->{headers}{'x-api-key'} && !exists $q->{headers}{'api-key'}, 'raw: no X-Api-Key / Api-Key');
    ok(!exists $q->{headers}{'proxy-authorization'}, 'raw: no Proxy-Authorization');
    ok(!exists $q->{headers}{'accept-encoding'}, 'raw: client Accept-Encoding not forwarded');
    is($q->{headers}{'x-trace-id'}, 'trace-77', 'raw: other client headers forwarded (llm_pass_request_headers on)');
    is($q->{headers}{'x-org'}, 'org-42', 'raw: provider "header" directive sent');
    is($q->{headers}{'x-project'}, 'proj-7', 'raw: second provider "header" directive sent');
    like($q->{headers}{'content-type'} // '', qr{^application/json}, 'raw: Content-Type application/json');
    is($q->{headers}{'content-length'}, length $q->{body}, 'raw: Content-Length matches the body')
        unless ($q->{headers}{'transfer-encoding'} // '') =~ /chunked/;
    my $sent = $q->{json} // {};
    is($sent->{model}, 'fancy-upstream-v2', 'raw: body model is the provider name of the alias');
    my %rest = %$sent; delete $rest{model};
    my %want = %$client_body; delete $want{model};
    is_deeply(\%rest, \%want, 'raw: every other body field is preserved');

    $raw->reset_log;
    $r = gw(path => '/nohdr/v1/chat/completions', body => $client_body,
            headers => [ 'X-Trace-Id' => 'trace-88', Authorization => 'Bearer client-secret-key' ]);
    is($r->{status}, 200, 'llm_pass_request_headers off: 200');
    $q = $raw->last_request // { headers => {}, raw => '' };
    ok(!exists $q->{headers}{'x-trace-id'}, 'llm_pass_request_headers off: client headers not forwarded');
    is($q->{headers}{authorization}, 'Bearer sk-raw', 'llm_pass_request_headers off: provider key still sent');
    is($q->{headers}{'x-org'}, 'org-42', 'llm_pass_request_headers off: provider "header" still sent');

    $raw->reset_log;
    $r = gw(path => '/rawhost/v1/chat/completions', body => { model => 'anything', messages => $msgs });
    is($r->{status}, 200, 'host directive: 200');
    $q = $raw->last_request // { headers => {} };
    is($q->{headers}{host}, 'provider.example', 'host directive: Host header is the configured host');
    like($q->{request_line} // '', qr{^POST /v1/chat/completions }, 'host directive: path from the url');
    is($q->{headers}{authorization}, 'Bearer sk-raw2', 'host directive: its own provider key');

    # chunked request body from the client
    $raw->reset_log;
    my $json = json_encode({ model => 'fancy', messages => $msgs });
    $r = gw(path => '/raw/v1/chat/completions', body => $json, chunked => [ $json =~ /(.{1,7})/gs ],
            headers => [ 'Content-Type' => 'application/json' ]);
    is($r->{status}, 200, 'chunked client request body: 200');
    $q = $raw->last_request // {};
    is(($q->{json} // {})->{model}, 'fancy-upstream-v2', 'chunked client request body: reassembled and rewritten');
    my $te = $q->{headers}{'transfer-encoding'};
    my $cl = $q->{headers}{'content-length'};
    ok((defined($te) ? 1 : 0) + (defined($cl) ? 1 : 0) == 1, 'chunked client request body: provider request has exactly one of Content-Length / Transfer-Encoding');
    is($cl, length $q->{body}, 'chunked client request body: Content-Length matches what was sent') if defined $cl;
}

# ---------------------------------------------------------------------------
# provider errors are passed through

for my $st (429, 500) {
    my $direct = http_request(port => $mock, method => 'POST', path => '/v1/chat/completions',
                              headers => [ 'X-Mock-Status' => $st ],
                              body => { model => 'gpt-4o-2024-08-06', messages => $msgs });
    my $r = gw(path => '/v1/chat/completions', headers => [ 'X-Mock-Status' => $st, 'X-Test-Id' => "prov-$st" ],
               body => { model => 'gpt-4o', messages => $msgs });
    is($r->{status}, $st, "provider $st: status passed through");
    is_deeply(json_decode($r->{body}), json_decode($direct->{body}),
              "provider $st: body passed through as-is") or diag("gw: $r->{body}\nmock: $direct->{body}");
    is($r->{headers}{'retry-after'}, '1', 'provider 429: Retry-After passed through') if $st == 429;
}
{
    my $r = gw(path => '/v1/chat/completions', headers => [ 'X-Mock-Status' => 500 ],
               body => { model => 'gpt-4o', messages => $msgs, stream => $TRUE });
    is($r->{status}, 500, 'provider 500 on a streaming request: passed through');
}

# ---------------------------------------------------------------------------
# variables in the access log

{
    my @lines = $t->wait_access_log('gw.log', 1);
    # the log line of a request is written when the request ends; wait for the last tagged one
    wait_for(sub { grep { /^prov-500\|/ } $t->access_log('gw.log') });
    my %log;
    for my $l ($t->access_log('gw.log')) {
        my ($id, @f) = split /\|/, $l, -1;
        $log{$id} = join '|', @f if $id ne '-';
    }
    my %want = (
        'chat'         => 'mock1|main|gpt-4o|gpt-4o-2024-08-06|0|-|200|200',
        'stream'       => 'mock1|main|gpt-4o|gpt-4o-2024-08-06|1|-|200|200',
        'multi-other'  => 'mock2|multi|other|other-model|0|-|200|200',
        'prov-429'     => 'mock1|main|gpt-4o|gpt-4o-2024-08-06|0|-|429|429',
        'prov-500'     => 'mock1|main|gpt-4o|gpt-4o-2024-08-06|0|-|500|500',
    );
    for my $id (sort keys %want) {
        is($log{$id}, $want{$id}, "access log: variables for '$id'");
    }
    http_request(port => $gw, path => '/plain', headers => [ 'X-Test-Id' => 'plain' ]);
    wait_for(sub { grep { /^plain\|/ } $t->access_log('gw.log') });
    ($log{plain}) = map { (split /\|/, $_, 2)[1] } grep { /^plain\|/ } $t->access_log('gw.log');
    is($log{plain}, '-|-|-|-|-|-|-|200', 'access log: variables are empty (-) outside llm_pass');

    # gateway errors: $llm_error set, no upstream status
    for my $code (qw(invalid_json missing_model invalid_messages)) {
        my @f = split /\|/, $log{"err-$code"} // '', -1;
        is("$f[5]|$f[6]|$f[7]", "$code|-|400", "access log: \$llm_error=$code, no upstream status, 400");
    }
    my @f = split /\|/, $log{'err-model_not_found'} // '', -1;
    is("$f[2]|$f[5]|$f[6]|$f[7]", 'nope|model_not_found|-|404',
       'access log: model_not_found with $llm_model as requested');
    @f = split /\|/, $log{'too-large'} // '', -1;
    is("$f[5]|$f[7]", 'request_too_large|413', 'access log: request_too_large');
}

$t->finish;
done_testing;
