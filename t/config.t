#!/usr/bin/perl
# Configuration: valid configs pass `nginx -t`, invalid ones fail with a clear
# [emerg] message naming the problem.

use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use LLMTest;

my $t = LLMTest->new;
$t->write_file('key.txt', "sk-from-file\n");
$t->write_file('key-multiline.txt', "sk-first-line\nsecond line: a comment, not part of the key\n");

$ENV{LLM_TEST_KEY_SET} = 'sk-from-env';
delete $ENV{LLM_TEST_KEY_UNSET};

# a complete http{} block; $providers and $loc are spliced in
sub conf {
    my ($providers, $loc) = @_;
    $loc //= 'llm_pass main;';
    return <<"CONF";
http {
    $providers

    server {
        listen 127.0.0.1:%%PORT_GW%%;
        location /v1/ { $loc }
        location /mock/v1/ { llm_mock; }
    }
}
CONF
}

my $good_provider = <<'P';
    llm_provider openai1 {
        format openai;
        url http://127.0.0.1:%%PORT_UP%%/v1;
        key sk-inline;
        model gpt-4o gpt-4o-2024-08-06;
        model mini;
    }
    llm_route main { provider openai1; }
P

# ---------------------------------------------------------------------------
# valid configurations

my @valid = (
    [ 'minimal provider + route', $good_provider ],
    [ 'llm_pass naming a provider directly', $good_provider, 'llm_pass openai1;' ],
    [ 'all provider directives', <<'P' ],
    llm_provider full {
        format openai;
        url http://127.0.0.1:%%PORT_UP%%/v1;
        key_file %%DIR%%/key.txt;
        model a;
        model b b-upstream;
        host api.example.test;
        header X-Org org-1;
        header X-Project proj-2;
        connect_timeout 2s;
        send_timeout 5s;
        read_timeout 30s;
        keepalive 8;
        ssl_verify on;
    }
    llm_route main { provider full; }
P
    [ 'key_file: only the first line is the key', <<'P' ],
    llm_provider filekey { url http://127.0.0.1:%%PORT_UP%%/v1; key_file %%DIR%%/key-multiline.txt; }
    llm_route main { provider filekey; }
P
    [ 'key_env naming a set variable', <<'P' ],
    llm_provider envkey { url http://127.0.0.1:%%PORT_UP%%/v1; key_env LLM_TEST_KEY_SET; }
    llm_route main { provider envkey; }
P
    [ 'keepalive off, ssl_verify off, https url', <<'P' ],
    llm_provider tls {
        url https://127.0.0.1:%%PORT_UP%%/v1;
        key k;
        keepalive off;
        ssl_verify off;
    }
    llm_route main { provider tls; }
P
    [ 'https url with ssl_trusted_certificate', <<'P' ],
    llm_provider tls {
        url https://127.0.0.1:%%PORT_UP%%/v1;
        host api.example.test;
        key k;
        ssl_trusted_certificate /etc/ssl/certs/ca-certificates.crt;
    }
    llm_route main { provider tls; }
P
    [ 'url naming an upstream{} block', <<'P' ],
    upstream llm_backend { server 127.0.0.1:%%PORT_UP%%; keepalive 4; }
    llm_provider viaups { url http://llm_backend/v1; key k; }
    llm_route main { provider viaups; }
P
    [ 'weighted route with two providers', <<'P' ],
    llm_provider p1 { url http://127.0.0.1:%%PORT_UP%%/v1; key k1; }
    llm_provider p2 { url http://127.0.0.1:%%PORT_UP2%%/v1; key k2; }
    llm_route main { provider p1 weight=3; provider p2 weight=1; }
P
    [ 'llm_mock arguments', $good_provider,
      'llm_pass main; } location /m1/ { llm_mock chunks=8 delay=10ms key=secret;' ],
    [ 'llm_pass_request_headers off', $good_provider,
      'llm_pass main; llm_pass_request_headers off;' ],
);

for my $v (@valid) {
    my ($name, $prov, $loc) = @$v;
    my ($rc, $out) = $t->nginx_t(conf($prov, $loc));
    is($rc, 0, "valid: $name") or diag($out);
}

# ---------------------------------------------------------------------------
# invalid configurations: [name, providers, location, expected message regex]

my @invalid = (
    [ 'llm_pass of an unknown route', $good_provider, 'llm_pass nosuchroute;',
      qr/nosuchroute/ ],
    [ 'provider without url', <<'P', undef, qr/\burl\b/i ],
    llm_provider nourl { key k; model m; }
    llm_route main { provider nourl; }
P
    [ 'bad url scheme', <<'P', undef, qr/ftp|scheme/i ],
    llm_provider badscheme { url ftp://127.0.0.1:%%PORT_UP%%/v1; key k; }
    llm_route main { provider badscheme; }
P
    [ 'unknown format', <<'P', undef, qr/soapbox/ ],
    llm_provider badformat { format soapbox; url http://127.0.0.1:%%PORT_UP%%/v1; key k; }
    llm_route main { provider badformat; }
P
    [ 'key_env naming an unset variable', <<'P', undef, qr/LLM_TEST_KEY_UNSET/ ],
    llm_provider envkey { url http://127.0.0.1:%%PORT_UP%%/v1; key_env LLM_TEST_KEY_UNSET; }
    llm_route main { provider envkey; }
P
    [ 'key_file that does not exist', <<'P', undef, qr/no-such-key-file/ ],
    llm_provider filekey { url http://127.0.0.1:%%PORT_UP%%/v1; key_file %%DIR%%/no-such-key-file; }
    llm_route main { provider filekey; }
P
    [ 'route with unknown provider', <<'P', undef, qr/nosuchprovider/ ],
    llm_provider p1 { url http://127.0.0.1:%%PORT_UP%%/v1; key k; }
    llm_route main { provider p1; provider nosuchprovider; }
P
    [ 'weight=0', <<'P', undef, qr/weight/i ],
    llm_provider p1 { url http://127.0.0.1:%%PORT_UP%%/v1; key k; }
    llm_provider p2 { url http://127.0.0.1:%%PORT_UP%%/v1; key k; }
    llm_route main { provider p1 weight=0; provider p2; }
P
    [ 'duplicate provider', <<'P', undef, qr/duplicate|already|twice|more than once/i ],
    llm_provider openai1 { url http://127.0.0.1:%%PORT_UP%%/v1; key k1; }
    llm_provider openai1 { url http://127.0.0.1:%%PORT_UP2%%/v1; key k2; }
    llm_route main { provider openai1; }
P
);

for my $v (@invalid) {
    my ($name, $prov, $loc, $re) = @$v;
    my ($rc, $out) = $t->nginx_t(conf($prov, $loc));
    isnt($rc, 0, "invalid: $name: nginx -t fails");
    like($out, qr/\[emerg\]/, "invalid: $name: reported as [emerg]");
    like($out, $re, "invalid: $name: message names the problem") or diag($out);
}

# the valid base config also starts and serves (sanity check of the harness)
ok($t->run(conf($good_provider)), 'valid config starts');
$t->finish;

done_testing;
