#!/usr/bin/perl
# HTTPS providers: certificate verification against ssl_trusted_certificate,
# the default trust store, ssl_verify off, verify name / SNI from "host".

use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use LLMTest;

my $t = LLMTest->new;
my $d = $t->dir;

# a private CA and a server certificate for provider.test / 127.0.0.1
$t->write_file('ext.cnf', "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
    . "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:provider.test,IP:127.0.0.1\n");
my @cmds = (
    [ qw(openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2),
      -keyout => "$d/ca.key", -out => "$d/ca.crt", -subj => '/CN=nginx-llm-gateway test CA',
      -addext => 'basicConstraints=critical,CA:TRUE', -addext => 'keyUsage=critical,keyCertSign,cRLSign' ],
    [ qw(openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes),
      -keyout => "$d/server.key", -out => "$d/server.csr", -subj => '/CN=provider.test' ],
    [ qw(openssl x509 -req -days 2 -set_serial 2), -in => "$d/server.csr", -CA => "$d/ca.crt",
      -CAkey => "$d/ca.key", -out => "$d/server.crt", -extfile => "$d/ext.cnf" ],
);
for my $c (@cmds) {
    my $out = $t->run_cmd(@$c);
    if ($?) { BAIL_OUT("openssl failed: @$c\n$out") }
}
ok(-s "$d/server.crt" && -s "$d/ca.crt", 'test CA and server certificate generated');

$t->run(<<'CONF');
http {
    log_format tls '$request_uri|$ssl_server_name|$http_host|$ssl_protocol';

    llm_provider tls_ok {
        url https://127.0.0.1:%%PORT_TLS%%/v1;
        host provider.test;
        key sk-tls;
        ssl_trusted_certificate %%DIR%%/ca.crt;
    }
    llm_provider tls_default {
        url https://127.0.0.1:%%PORT_TLS%%/v1;
        host provider.test;
        key sk-tls;
    }
    llm_provider tls_noverify {
        url https://127.0.0.1:%%PORT_TLS%%/v1;
        host provider.test;
        key sk-tls;
        ssl_verify off;
    }
    llm_provider tls_wrongname {
        url https://127.0.0.1:%%PORT_TLS%%/v1;
        host wrong-name.test;
        key sk-tls;
        ssl_trusted_certificate %%DIR%%/ca.crt;
    }

    server {
        listen 127.0.0.1:%%PORT_TLS%% ssl;
        ssl_certificate     %%DIR%%/server.crt;
        ssl_certificate_key %%DIR%%/server.key;
        access_log %%DIR%%/tls.log tls;
        location /v1/ { llm_mock key=sk-tls; }
    }

    server {
        listen 127.0.0.1:%%PORT_GW%%;
        location /ok/v1/        { llm_pass tls_ok; }
        location /default/v1/   { llm_pass tls_default; }
        location /noverify/v1/  { llm_pass tls_noverify; }
        location /wrongname/v1/ { llm_pass tls_wrongname; }
    }
}
CONF

my $gw = $t->port('GW');
my $msgs = [ { role => 'user', content => 'Hello over TLS' } ];

sub chat {
    my ($prefix, %a) = @_;
    return http_request(port => $gw, method => 'POST', path => "/$prefix/v1/chat/completions",
                        body => { model => 'gpt-tls', messages => $msgs }, timeout => 10, %a);
}

# verification failures on fresh connections
{
    my $r = chat('default');
    error_ok($r, 502, 'provider_unavailable',
             'default trust store does not know the test CA: 502 provider_unavailable');
    like($t->error_log, qr/verif/i, 'certificate verification failure is logged');

    $r = chat('wrongname');
    error_ok($r, 502, 'provider_unavailable', 'certificate does not match "host": 502');
}

# verified provider; sequential requests reuse the TLS connection (keepalive)
{
    for my $i (1 .. 3) {
        my $r = chat('ok');
        is($r->{status}, 200, "ssl_trusted_certificate = test CA: request $i: 200")
            or diag($r->{error} // $r->{body});
        is($r->{json}{choices}[0]{message}{content}, mock_text(), "ssl_trusted_certificate: request $i: mock answer")
            if $i == 1;
    }

    my @l = $t->wait_access_log('tls.log', 1);
    my ($uri, $sni, $host, $proto) = split /\|/, $l[0] // '';
    is($sni, 'provider.test', 'TLS SNI is the provider host');
    is($host, 'provider.test', 'Host header is the provider host');
    like($proto, qr/^TLSv1\.[23]$/, 'TLS 1.2+ used');

    my $s = LLMTest::HTTP::Stream->open(port => $gw, path => '/ok/v1/chat/completions', timeout => 3,
        body => { model => 'gpt-tls', messages => $msgs, stream => JSON::PP::true });
    $s->read_all(3);
    my @p = $s->data_payloads;
    is($s->{status}, 200, 'stream over TLS: 200');
    is(scalar @p, 7, 'stream over TLS: 7 events');
    is($p[-1], '[DONE]', 'stream over TLS: [DONE] last');
    ok($s->complete, 'stream over TLS: properly terminated');

    my $r = http_request(port => $gw, method => 'POST', path => '/ok/v1/embeddings', timeout => 3,
                         body => { model => 'e', input => 'x' });
    is($r->{status}, 200, 'embeddings over TLS: 200');
}

# a connection verified for one provider must not be reused by a provider
# whose own verification would fail (same address, different trust settings)
{
    my $r = chat('default', timeout => 3);
    error_ok($r, 502, 'provider_unavailable',
             'default trust store after tls_ok pooled connections to the same address: still 502');
    $r = chat('wrongname', timeout => 3);
    error_ok($r, 502, 'provider_unavailable',
             'wrong verify name after tls_ok pooled connections to the same address: still 502');
}

{
    my $r = chat('noverify', timeout => 3);
    is($r->{status}, 200, 'ssl_verify off: 200 with an untrusted certificate');
    $r = chat('noverify', timeout => 3);
    is($r->{status}, 200, 'ssl_verify off: second request: 200');
}

$t->finish;
done_testing;
