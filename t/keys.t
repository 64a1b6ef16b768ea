#!/usr/bin/perl
# llm_keys: virtual keys from a JSON file, 2 workers.  401 for a missing or
# unknown key, 403 for a model or a route the key may not use, the three
# headers SDKs send, a file of digests only, $llm_key_name and
# $llm_key_meta_*, keys never forwarded nor logged nor shown, malformed files
# refused by nginx -t without quoting a key, a reload that re-reads the file,
# and GET /v1/models.

use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use LLMTest;
use Digest::SHA qw(sha256_hex);

my $t = LLMTest->new(workers => 2);

my %KEY = (
    search => 'sk-gw-search-7f3a9c2e51b84d06',
    batch  => 'sk-gw-batch-0c1d2e3f4a5b6c7d',
    other  => 'sk-gw-other-a1b2c3d4e5f60718',
    goog   => 'AIzaGatewayKey-9e8d7c6b5a4f3e2d',
    late   => 'sk-gw-late-5544332211ffeedd',
);
my $UNKNOWN = 'sk-gw-unknown-1122334455667788';

sub keys_file {
    my (@entries) = @_;
    return json_encode({ keys => \@entries }) . "\n";
}

my @ENTRIES = (
    { name => 'team-search', key => $KEY{search}, models => [ 'gpt-4o-mini', 'fast' ],
      routes => [ 'main', 'raw' ],
      metadata => { team => 'search', Project => 'ranker' } },
    { name => 'batch', key => 'sha256:' . uc sha256_hex($KEY{batch}) },
    { name => 'other-only', key => $KEY{other}, routes => [ 'other' ] },
    { name => 'gemini-sdk', key => $KEY{goog}, metadata => { team => 'maps' } },
);

$t->write_file('keys.json', keys_file(@ENTRIES));
$t->write_file('digests.json', keys_file(
    { name => 'digest-batch', key => 'sha256:' . sha256_hex($KEY{batch}),
      metadata => { team => 'offline' } },
    { name => 'digest-other', key => 'sha256:' . sha256_hex($KEY{other}) },
));

# a provider that records the exact bytes it receives
my $raw = $t->fake_provider(port => $t->port('RAW'), handler => sub {
    my ($req) = @_;
    my $model = ref $req->{json} eq 'HASH' ? $req->{json}{model} // '' : '';
    my $body = json_encode({
        id => 'chatcmpl-raw', object => 'chat.completion', created => 1, model => $model,
        choices => [ { index => 0, message => { role => 'assistant', content => 'hi' },
                       finish_reason => 'stop' } ],
        usage => { prompt_tokens => 1, completion_tokens => 1, total_tokens => 2 },
    });
    return [ [ send => LLMTest::FakeProvider::http_response(
        status => 200, headers => [ 'Content-Type' => 'application/json' ], body => $body) ] ];
});

my $CONF = <<'CONF';
http {
    log_format keys '$http_x_test_id|$llm_key_name|$llm_key_meta_team|$llm_key_meta_project|$llm_key_meta_none|$llm_provider|$llm_model|$status|$llm_error|$request|$http_user_agent|$llm_route|$llm_upstream_model';

    llm_zone stats 1m;

    llm_provider mock {
        url http://127.0.0.1:%%PORT_MOCK%%/v1;
        key sk-provider-mock;
        model gpt-4o-mini;
        model fast gpt-4o-mini;
        model gpt-4o;
    }
    llm_provider raw {
        url http://127.0.0.1:%%PORT_RAW%%/v1;
        key sk-provider-raw;
    }
    llm_route main  { provider mock; }
    llm_route other { provider mock; }

    llm_keys %%DIR%%/keys.json;

    server {
        listen 127.0.0.1:%%PORT_MOCK%%;
        location /v1/ { llm_mock; }
    }

    server {
        listen 127.0.0.1:%%PORT_GW%%;
        access_log %%DIR%%/gw.log keys;

        location /v1/         { llm_pass main; client_max_body_size 2k; }
        location /other/v1/   { llm_pass other; }
        location /raw/v1/     { llm_pass raw; }
        location /open/v1/    { llm_keys off; llm_pass main; }
        location /digest/v1/  { llm_keys %%DIR%%/digests.json; llm_pass main; }
        location = /status    { llm_status; }
    }
}
CONF

$t->run($CONF);

my $gw = $t->port('GW');
my $msgs = [ { role => 'user', content => 'Hello world!' } ];
my $n = 0;

sub post {
    my (%a) = @_;
    my $id = $a{id} // ('r' . ++$n);
    my @h = ('X-Test-Id' => $id, @{ $a{headers} // [] });
    return http_request(port => $gw, method => 'POST',
                        path => $a{path} // '/v1/chat/completions',
                        headers => \@h,
                        body => $a{body} // { model => $a{model} // 'gpt-4o-mini', messages => $msgs },
                        chunked => $a{chunked});
}

sub bearer { return [ Authorization => "Bearer $_[0]" ] }

sub log_line {
    my ($id) = @_;
    my $l = wait_for(sub { (grep { /^\Q$id\E\|/ } $t->access_log('gw.log'))[0] }, 5);
    return [ split /\|/, $l // '', -1 ];
}

# ---------------------------------------------------------------------------
# 401: unknown and missing keys, in OpenAI's shape

{
    my $r = post(id => 'unknown', headers => bearer($UNKNOWN));
    error_ok($r, 401, 'invalid_api_key', 'unknown key: 401 invalid_api_key');
    is($r->{json}{error}{type}, 'invalid_request_error', 'unknown key: type invalid_request_error, as OpenAI');
    ok(exists $r->{json}{error}{param} && !defined $r->{json}{error}{param}, 'unknown key: param null');
    unlike($r->{body}, qr/\Q$UNKNOWN\E/, 'unknown key: the answer does not echo the key');

    $r = post(id => 'missing');
    error_ok($r, 401, 'invalid_api_key', 'missing key: 401 invalid_api_key');
    like($r->{json}{error}{message} // '', qr/API key/, 'missing key: the message says an API key is needed');

    $r = post(id => 'basic', headers => [ Authorization => 'Basic ' . $KEY{search} ]);
    error_ok($r, 401, 'invalid_api_key', 'a key in Basic credentials is not a Bearer token: 401');

    $r = post(id => 'empty-bearer', headers => [ Authorization => 'Bearer ' ]);
    error_ok($r, 401, 'invalid_api_key', 'an empty Bearer token: 401');

    $r = post(id => 'prefix', headers => bearer(substr($KEY{search}, 0, -1)));
    error_ok($r, 401, 'invalid_api_key', 'a key one byte short: 401');

    $r = post(id => 'longer', headers => bearer($KEY{search} . 'x'));
    error_ok($r, 401, 'invalid_api_key', 'a key one byte longer: 401');

    $r = post(id => 'digest-as-key', headers => bearer(sha256_hex($KEY{search})));
    error_ok($r, 401, 'invalid_api_key', "the key's digest is not a key: 401");

    my $l = log_line('unknown');
    is_deeply([ @$l[1, 5, 7, 8] ], [ '-', '-', '401', 'invalid_api_key' ],
              'unknown key: logged with no key name, no provider, 401, invalid_api_key');
    $l = log_line('missing');
    is($l->[8], 'invalid_api_key', 'missing key: $llm_error invalid_api_key');
}

# the key is checked before the body is read: a chunked body over
# client_max_body_size (found too large only as it is read) gets 401 without
# a key, 413 with one; the connection stays usable after the 401
{
    my $big = { model => 'gpt-4o-mini', messages => [ { role => 'user', content => 'x' x 4000 } ] };
    my $r = post(id => 'big-nokey', body => $big, chunked => 1);
    error_ok($r, 401, 'invalid_api_key', 'a body too large and no key: 401 (the key is checked first)');
    $r = post(id => 'big-key', body => $big, chunked => 1, headers => bearer($KEY{search}));
    is($r->{status}, 413, 'a body too large with a valid key: 413');

    my $c = LLMTest::HTTP::Client->new(port => $gw);
    $r = $c->request(method => 'POST', path => '/v1/chat/completions',
                     headers => [ 'X-Test-Id' => 'ka1' ],
                     body => { model => 'gpt-4o-mini', messages => $msgs });
    is($r->{status}, 401, 'keep-alive: 401');
    $r = $c->request(method => 'POST', path => '/v1/chat/completions',
                     headers => [ 'X-Test-Id' => 'ka2', Authorization => "Bearer $KEY{search}" ],
                     body => { model => 'gpt-4o-mini', messages => $msgs });
    is($r->{status}, 200, 'keep-alive: the next request on the connection is read right after a 401');
    is($c->connects, 1, 'keep-alive: one connection for both');
    $c->close;
}

# ---------------------------------------------------------------------------
# the three headers that SDKs send

{
    my $r = post(id => 'bearer', headers => bearer($KEY{search}));
    is($r->{status}, 200, 'Authorization: Bearer: 200');
    is($r->{json}{choices}[0]{message}{content}, mock_text(), 'Bearer: the provider answered');

    $r = post(id => 'bearer-case', headers => [ Authorization => "bearer $KEY{search}" ]);
    is($r->{status}, 200, 'Authorization: bearer (any case): 200');

    $r = post(id => 'xapikey', headers => [ 'x-api-key' => $KEY{search} ]);
    is($r->{status}, 200, 'x-api-key: 200');

    $r = post(id => 'xgoog', headers => [ 'x-goog-api-key' => $KEY{goog} ]);
    is($r->{status}, 200, 'x-goog-api-key: 200');

    $r = post(id => 'sha-upper', headers => bearer($KEY{batch}));
    is($r->{status}, 200, 'an entry given as sha256: with upper-case hex digits: 200');

    my $l = log_line('bearer');
    is_deeply([ @$l[1 .. 7] ], [ 'team-search', 'search', 'ranker', '-', 'mock', 'gpt-4o-mini', '200' ],
              'log: $llm_key_name, $llm_key_meta_team, $llm_key_meta_project (named Project in '
              . 'the file: names compared without case), an unknown meta name is -')
        or diag(explain $l);
    $l = log_line('xgoog');
    is_deeply([ @$l[1 .. 4] ], [ 'gemini-sdk', 'maps', '-', '-' ], 'log: x-goog-api-key: its name and team');
    $l = log_line('sha-upper');
    is_deeply([ @$l[1 .. 3] ], [ 'batch', '-', '-' ], 'log: a key without metadata: its name, no metadata');
}

# ---------------------------------------------------------------------------
# 403: models and routes

{
    my $r = post(id => 'model-no', model => 'gpt-4o', headers => bearer($KEY{search}));
    error_ok($r, 403, 'model_not_allowed', 'a model the key may not use: 403 model_not_allowed');
    is($r->{json}{error}{param}, 'model', '403 model_not_allowed: param model');
    is($r->{json}{error}{type}, 'invalid_request_error', '403: type invalid_request_error');

    $r = post(id => 'model-alias', model => 'fast', headers => bearer($KEY{search}));
    is($r->{status}, 200, 'an alias the key may use: 200');

    $r = post(id => 'model-any', model => 'gpt-4o', headers => bearer($KEY{batch}));
    is($r->{status}, 200, 'a key without "models" may use any model');

    $r = post(id => 'route-no', headers => bearer($KEY{other}));
    error_ok($r, 403, 'route_not_allowed', 'a route the key may not use: 403 route_not_allowed');

    $r = post(id => 'route-yes', path => '/other/v1/chat/completions', headers => bearer($KEY{other}));
    is($r->{status}, 200, 'the route the key may use: 200');

    $r = post(id => 'route-search', path => '/other/v1/chat/completions', headers => bearer($KEY{search}));
    error_ok($r, 403, 'route_not_allowed', 'team-search on route other: 403');

    my $l = log_line('model-no');
    is_deeply([ @$l[1, 5, 6, 7, 8] ], [ 'team-search', '-', 'gpt-4o', '403', 'model_not_allowed' ],
              'log: 403 model_not_allowed names the key, no provider was tried');
    $l = log_line('route-no');
    is_deeply([ @$l[1, 5, 7, 8] ], [ 'other-only', '-', '403', 'route_not_allowed' ],
              'log: 403 route_not_allowed names the key, no provider was tried');
}

# ---------------------------------------------------------------------------
# a file of digests only; llm_keys off

{
    my $r = post(id => 'dig-batch', path => '/digest/v1/chat/completions', headers => bearer($KEY{batch}));
    is($r->{status}, 200, 'digests-only file: a key given by its digest: 200');
    $r = post(id => 'dig-other', path => '/digest/v1/chat/completions',
              headers => [ 'x-api-key' => $KEY{other} ]);
    is($r->{status}, 200, 'digests-only file: another key, by x-api-key: 200');
    $r = post(id => 'dig-search', path => '/digest/v1/chat/completions', headers => bearer($KEY{search}));
    error_ok($r, 401, 'invalid_api_key', 'digests-only file: a key of the other file: 401');

    my $l = log_line('dig-batch');
    is_deeply([ @$l[1, 2] ], [ 'digest-batch', 'offline' ], 'digests-only file: name and metadata logged');

    $r = post(id => 'open', path => '/open/v1/chat/completions');
    is($r->{status}, 200, 'llm_keys off: open without a key');
    $l = log_line('open');
    is($l->[1], '-', 'llm_keys off: no key name');
}

# ---------------------------------------------------------------------------
# the client's key never reaches the provider

{
    my @h = ( Authorization => "Bearer $KEY{search}", 'x-api-key' => $KEY{search},
              'x-goog-api-key' => $KEY{search} );
    my $r = post(id => 'raw', path => '/raw/v1/chat/completions', headers => \@h);
    is($r->{status}, 200, 'raw provider: 200');
    my @req = $raw->requests;
    is(scalar @req, 1, 'raw provider: one request');
    my $bytes = join '', map { $_->{raw} } @req;
    unlike($bytes, qr/\Q$KEY{search}\E/, 'the client key is in no byte sent to the provider');
    like($bytes, qr/\r\nAuthorization: Bearer sk-provider-raw\r\n/i, "the provider's own key is sent");
    is(scalar(grep { lc $_->[0] eq 'x-api-key' || lc $_->[0] eq 'x-goog-api-key' }
              @{$req[0]{header_lines}}), 0, 'no x-api-key nor x-goog-api-key sent to the provider');
}

# ---------------------------------------------------------------------------
# GET /v1/models

{
    my $get = sub {
        my ($path, @h) = @_;
        return http_request(port => $gw, method => 'GET', path => $path, headers => \@h);
    };
    my $ids = sub { [ sort map { $_->{id} } @{ $_[0]{json}{data} // [] } ] };

    my $r = $get->('/v1/models');
    error_ok($r, 401, 'invalid_api_key', 'GET /v1/models without a key: 401');
    $r = $get->('/v1/models', Authorization => "Bearer $UNKNOWN");
    error_ok($r, 401, 'invalid_api_key', 'GET /v1/models with an unknown key: 401');

    $r = $get->('/v1/models', Authorization => "Bearer $KEY{search}");
    is($r->{status}, 200, 'GET /v1/models with a key: 200');
    is_deeply($ids->($r), [ 'fast', 'gpt-4o-mini' ], 'GET /v1/models: only the models the key may use');

    $r = $get->('/v1/models', 'x-api-key' => $KEY{batch});
    is_deeply($ids->($r), [ 'fast', 'gpt-4o', 'gpt-4o-mini' ], 'GET /v1/models: a key with any model sees all');

    $r = $get->('/v1/models', Authorization => "Bearer $KEY{other}");
    error_ok($r, 403, 'route_not_allowed', 'GET /v1/models on a route the key may not use: 403');

    $r = $get->('/open/v1/models');
    is_deeply($ids->($r), [ 'fast', 'gpt-4o', 'gpt-4o-mini' ], 'GET /open/v1/models (llm_keys off): all, no key');
}

# ---------------------------------------------------------------------------
# no key, digest or 16+ hex digits of a digest in the logs or the status page

sub secrets {
    my @s;
    for my $k (values %KEY, $UNKNOWN) {
        push @s, [ 'key', qr/\Q$k\E/ ];
        my $hex = sha256_hex($k);
        # every 16-digit window of the digest, either case
        my @win = map { substr($hex, $_, 16) } 0 .. 48;
        my $re = join '|', @win;
        push @s, [ 'digest of ' . substr($k, 0, 6) . '...', qr/$re/i ];
    }
    return @s;
}

sub no_secrets {
    my ($what, $text) = @_;
    my @found = map { $_->[0] } grep { $text =~ $_->[1] } secrets();
    ok(!@found, "$what: no key and no 16 hex digits of a digest") or diag("found: @found");
}

{
    my $r = http_request(port => $gw, method => 'GET', path => '/status');
    is($r->{status}, 200, 'status page: 200');
    no_secrets('status page', $r->{body});
}

# ---------------------------------------------------------------------------
# reload re-reads the file: a key added works, a key removed gets 401

{
    $t->write_file('keys.json', keys_file(@ENTRIES[0, 2, 3],
        { name => 'late', key => $KEY{late}, metadata => { team => 'late-team' } }));
    ok($t->reload(undef, wait_old => 1), 'reload');

    my $r = post(id => 'late', headers => bearer($KEY{late}));
    is($r->{status}, 200, 'after reload: a key added to the file works');
    $r = post(id => 'removed', headers => bearer($KEY{batch}));
    error_ok($r, 401, 'invalid_api_key', 'after reload: a key removed from the file gets 401');
    $r = post(id => 'kept', headers => bearer($KEY{search}));
    is($r->{status}, 200, 'after reload: a key kept works');
    my $l = log_line('late');
    is_deeply([ @$l[1, 2] ], [ 'late', 'late-team' ], 'after reload: the new name and metadata are logged');

    # a broken file: the reload is refused, the old keys stay
    $t->write_file('keys.json', '{"keys": [');
    kill 'HUP', $t->pid;
    ok(wait_for(sub { $t->error_log =~ /keys file .*keys\.json.* is not valid JSON/ }, 5),
       'a reload with a broken file logs the file');
    $r = post(id => 'after-broken', headers => bearer($KEY{late}));
    is($r->{status}, 200, 'a reload with a broken file keeps the keys in use');
    $t->allow_error(qr/\[emerg\].*keys file/);
}

# ---------------------------------------------------------------------------
# malformed files fail nginx -t, naming the file and the entry, not the key

my $SECRET = 'sk-gw-secret-0123456789abcdef0123';
my $SECRET_HEX = sha256_hex($SECRET);

sub conf_with {
    my ($file, $params) = @_;
    $params //= '';
    return <<"CONF";
http {
    llm_provider mock { url http://127.0.0.1:1/v1; key k; }
    server {
        listen 127.0.0.1:%%PORT_T%%;
        location /v1/ { llm_keys %%DIR%%/$file$params; llm_pass mock; }
    }
}
CONF
}

sub bad_file {
    my ($name, $content, $want, %a) = @_;
    my $file = "bad-$n.json";
    $n++;
    $t->write_file($file, $content);
    my ($rc, $out) = $t->nginx_t(conf_with($file, $a{params}));
    isnt($rc, 0, "$name: nginx -t fails");
    like($out, qr/\Q$file\E/, "$name: the message names the file") or diag($out);
    like($out, $want, "$name: the message says what and where") or diag($out);
    my @win = map { substr($SECRET_HEX, $_, 16) } 0 .. 48;
    my $re = join '|', @win;
    ok($out !~ /\Q$SECRET\E/ && $out !~ /$re/i, "$name: no key and no digest in the message")
        or diag($out);
}

my $ok_entry = { name => 'good', key => 'sk-gw-good-key-000000000001' };

bad_file('not JSON', qq({"keys": [ {"name": "a", "key": "$SECRET"} ), qr/not valid JSON/);
bad_file('trailing data', keys_file($ok_entry) . qq({"key": "$SECRET"}), qr/not valid JSON/);
bad_file('an array', qq([ {"name": "a", "key": "$SECRET"} ]), qr/must be a JSON object with one member, "keys"/);
bad_file('keys an object', qq({"keys": {"a": "$SECRET"}}), qr/"keys": an array/);
bad_file('an unknown top-level member', qq({"keys": [], "$SECRET": 1}), qr/one member, "keys"/);
bad_file('an entry not an object', keys_file($ok_entry, $SECRET), qr/keys\[1\] of the keys file .*: an entry must be a JSON object/);
bad_file('a duplicate key', keys_file($ok_entry, { name => 'a', key => $SECRET },
                                      { name => 'b', key => "sha256:$SECRET_HEX" }),
         qr/keys\[1\] \("a"\) and keys\[2\] \("b"\) of the keys file .* have the same key/);
bad_file('a duplicate name', keys_file({ name => 'a', key => $SECRET }, $ok_entry,
                                       { name => 'a', key => 'sk-gw-other-1' }),
         qr/keys\[0\] and keys\[2\] of the keys file .* have the same name "a"/);
bad_file('a bad sha256: (63 digits)', keys_file({ name => 'a', key => 'sha256:' . substr($SECRET_HEX, 1) }),
         qr/keys\[0\] \("a"\) of the keys file .*: "key": "sha256:" must be followed by the 64 hex digits/);
bad_file('a bad sha256: (not hex)', keys_file($ok_entry, { name => 'z', key => 'sha256:' . ('g' x 64) }),
         qr/keys\[1\] \("z"\) .*"sha256:" must be followed/);
bad_file('an empty name', keys_file({ name => '', key => $SECRET }),
         qr/keys\[0\] of the keys file .*: "name" must be 1 to 128 bytes/);
bad_file('a name with a control character', keys_file($ok_entry, { name => "a\nb", key => $SECRET }),
         qr/keys\[1\] of the keys file .*: "name" must be/);
bad_file('no name', keys_file({ key => $SECRET }), qr/keys\[0\] of the keys file .*: no "name"/);
bad_file('no key', keys_file({ name => 'nokey' }), qr/keys\[0\] \("nokey"\) .*: no "key"/);
bad_file('an empty key', keys_file({ name => 'e', key => '' }), qr/keys\[0\] \("e"\) .*: "key" is empty/);
bad_file('a key with a space', keys_file({ name => 's', key => "sk-gw $SECRET" }),
         qr/keys\[0\] \("s"\) .*: "key" must be printable ASCII without spaces/);
bad_file('a key with \u0000', qq({"keys": [{"name": "nul", "key": "$SECRET\\u0000tail"}]}), qr/\\u0000/);
bad_file('a non-string model', keys_file({ name => 'm', key => $SECRET, models => [ 'ok', 5 ] }),
         qr/keys\[0\] \("m"\) .*: "models"\[1\] must be a string/);
bad_file('models not an array', keys_file({ name => 'm', key => $SECRET, models => 'gpt-4o' }),
         qr/"models" must be an array/);
bad_file('a non-string route', keys_file({ name => 'r', key => $SECRET, routes => [ undef ] }),
         qr/keys\[0\] \("r"\) .*: "routes"\[0\] must be a string/);
bad_file('a bad limit value', keys_file({ name => 'l', key => $SECRET, limits => { requests => 'many' } }),
         qr/keys\[0\] \("l"\) .*: invalid value of the limit "requests"/, params => ' zone=k:1m');
bad_file('a fractional concurrent', keys_file({ name => 'l', key => $SECRET, limits => { concurrent => 1.5 } }),
         qr/invalid value of the limit "concurrent"/, params => ' zone=k:1m');
bad_file('an unknown limit', keys_file({ name => 'l', key => $SECRET, limits => { $SECRET => '1/m' } }),
         qr/keys\[0\] \("l"\) .*: an unknown limit/, params => ' zone=k:1m');
bad_file('limits without zone=', keys_file({ name => 'lz', key => $SECRET, limits => { requests => '10/m' } }),
         qr/the entry "lz" of the keys file .* has limits: llm_keys needs zone=NAME:SIZE/);
bad_file('an unknown member (a typo)', keys_file({ name => 'typo', key => $SECRET, model => [ 'gpt-4o' ] }),
         qr/keys\[0\] \("typo"\) .*: an unknown member/);
bad_file('a key as a member name', keys_file({ name => 'astray', key => 'sk-gw-x', $SECRET => 1 }),
         qr/keys\[0\] \("astray"\) .*: an unknown member/);
bad_file('a member twice', qq({"keys": [{"name": "twice", "key": "$SECRET", "key": "sk-gw-y"}]}),
         qr/keys\[0\] \("twice"\) .*: "key" is given twice/);
bad_file('a non-string metadata value', keys_file({ name => 'md', key => $SECRET, metadata => { team => 1 } }),
         qr/keys\[0\] \("md"\) .*: a metadata value must be a string/);
bad_file('a bad metadata name', keys_file({ name => 'md', key => $SECRET, metadata => { 'a-b' => 'x' } }),
         qr/a metadata name must be 1 to 64 letters, digits or underscores/);
bad_file('a metadata name twice', qq({"keys": [{"name": "md2", "key": "$SECRET", "metadata": {"Team": "a", "team": "b"}}]}),
         qr/keys\[0\] \("md2"\) .*: a metadata name is given twice/);

{
    my ($rc, $out) = $t->nginx_t(conf_with('no-such-file.json'));
    isnt($rc, 0, 'a missing file: nginx -t fails');
    like($out, qr/no-such-file\.json/, 'a missing file: named');

    $t->write_file('good.json', keys_file($ok_entry,
        { name => 'limited', key => $SECRET, limits => { requests => '600/m', tokens => '200000/m',
                                                         spend => '20/d', concurrent => 4 } }));
    ($rc, $out) = $t->nginx_t(conf_with('good.json', ' zone=keylimits:1m'));
    is($rc, 0, 'a file with limits and zone=: nginx -t passes') or diag($out);

    ($rc, $out) = $t->nginx_t(conf_with('good.json', ' zone=keylimits'));
    isnt($rc, 0, 'zone= without a size: nginx -t fails');
    like($out, qr/zone=NAME:SIZE/, 'zone= without a size: the message shows the syntax');

    ($rc, $out) = $t->nginx_t(conf_with('good.json', ' size=1m'));
    isnt($rc, 0, 'an unknown parameter: nginx -t fails');

    $t->write_file('empty.json', '{"keys": []}');
    ($rc, $out) = $t->nginx_t(conf_with('empty.json'));
    is($rc, 0, 'an empty list of keys: nginx -t passes (every request gets 401)') or diag($out);

    ($rc, $out) = $t->nginx_t(<<'CONF');
http {
    llm_provider mock { url http://127.0.0.1:1/v1; key k; }
    server {
        listen 127.0.0.1:%%PORT_T%%;
        location /v1/ { llm_keys off; llm_keys off; llm_pass mock; }
    }
}
CONF
    isnt($rc, 0, 'llm_keys twice in a location: nginx -t fails');
    like($out, qr/"llm_keys" directive is duplicate/, 'llm_keys twice: is duplicate');
}

# ---------------------------------------------------------------------------
# the logs at the end: access and error log (info) hold no key nor digest

$t->stop;
no_secrets('access log', $t->read_file('gw.log'));
no_secrets('default access log', $t->read_file('access.log'));
no_secrets('error log (info)', $t->error_log);

$t->finish;

done_testing;
