#!/usr/bin/perl
# Upstream keepalive: sequential gateway requests reuse provider connections
# (url hosts: built-in pool; upstream{} blocks: nginx's keepalive directive),
# "keepalive off" opens a connection per request, and connections the
# provider closes are never reused.

use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use LLMTest;
use Time::HiRes qw(time sleep);

my $t = LLMTest->new(workers => 1);

my $OK_BODY = json_encode({ id => 'chatcmpl-ka', object => 'chat.completion', created => 1, model => 'm',
    choices => [ { index => 0, message => { role => 'assistant', content => 'ka' }, finish_reason => 'stop' } ],
    usage => { prompt_tokens => 1, completion_tokens => 1, total_tokens => 2 } });

# raw providers: one keeps connections alive, one says Connection: close,
# one keeps alive but drops idle connections after 200ms
my $raw_ka = $t->fake_provider(port => $t->port('RAWKA'), handler => sub {
    return [ [ send => LLMTest::FakeProvider::http_response(
                 body => $OK_BODY, headers => [ 'Content-Type' => 'application/json' ], keepalive => 1) ],
             [ 'keepalive' ] ];
});
my $raw_close = $t->fake_provider(port => $t->port('RAWCLOSE'), handler => sub {
    return [ [ send => LLMTest::FakeProvider::http_response(
                 body => $OK_BODY, headers => [ 'Content-Type' => 'application/json' ]) ], [ 'close' ] ];
});
my $raw_idle = $t->fake_provider(port => $t->port('RAWIDLE'), handler => sub {
    return [ [ send => LLMTest::FakeProvider::http_response(
                 body => $OK_BODY, headers => [ 'Content-Type' => 'application/json' ], keepalive => 1) ],
             [ wait_eof => 0.2 ], [ 'close' ] ];
});

$t->run(<<'CONF');
http {
    log_format conn '$uri|$connection|$connection_requests|$status';

    upstream mock_ka   { server 127.0.0.1:%%PORT_MOCK%%; keepalive 4; }
    upstream mock_noka { server 127.0.0.1:%%PORT_MOCK%%; }

    llm_provider ka      { url http://127.0.0.1:%%PORT_MOCK%%/ka/v1; key k; }
    llm_provider ka1     { url http://127.0.0.1:%%PORT_MOCK%%/ka1/v1; key k; keepalive 1; }
    llm_provider noka    { url http://127.0.0.1:%%PORT_MOCK2%%/noka/v1; key k; keepalive off; }
    llm_provider nokashared { url http://127.0.0.1:%%PORT_MOCK%%/nokashared/v1; key k; keepalive off; }
    llm_provider ups     { url http://mock_ka/ups/v1; key k; }
    llm_provider upsnoka { url http://mock_noka/upsnoka/v1; key k; }
    llm_provider rawka    { url http://127.0.0.1:%%PORT_RAWKA%%/v1; key k; }
    llm_provider rawclose { url http://127.0.0.1:%%PORT_RAWCLOSE%%/v1; key k; }
    llm_provider rawidle  { url http://127.0.0.1:%%PORT_RAWIDLE%%/v1; key k; }

    server {
        listen 127.0.0.1:%%PORT_MOCK%%;
        listen 127.0.0.1:%%PORT_MOCK2%%;
        access_log %%DIR%%/mock.log conn;
        keepalive_requests 1000;
        location / { llm_mock; }
    }

    server {
        listen 127.0.0.1:%%PORT_GW%%;
        location /ka/v1/       { llm_pass ka; }
        location /ka1/v1/      { llm_pass ka1; }
        location /noka/v1/     { llm_pass noka; }
        location /nokashared/v1/ { llm_pass nokashared; }
        location /ups/v1/      { llm_pass ups; }
        location /upsnoka/v1/  { llm_pass upsnoka; }
        location /rawka/v1/    { llm_pass rawka; }
        location /rawclose/v1/ { llm_pass rawclose; }
        location /rawidle/v1/  { llm_pass rawidle; }
    }
}
CONF

my $gw = $t->port('GW');
my $msgs = [ { role => 'user', content => 'Hello' } ];
my $N = 8;

# N sequential requests (alternating non-stream / stream when $mixed);
# returns the number that succeeded
sub sequential {
    my ($prefix, $n, %o) = @_;
    my $ok = 0;
    for my $i (1 .. $n) {
        my $stream = $o{mixed} && $i % 2 == 0;
        if ($stream) {
            my $s = LLMTest::HTTP::Stream->open(port => $gw, path => "/$prefix/v1/chat/completions",
                body => { model => 'm', messages => $msgs, stream => JSON::PP::true });
            $s->read_all(10);
            my @p = $s->data_payloads;
            $ok++ if $s->{status} == 200 && $s->complete && @p && $p[-1] eq '[DONE]';
        } else {
            my $r = http_request(port => $gw, method => 'POST', path => "/$prefix/v1/chat/completions",
                                 body => { model => 'm', messages => $msgs });
            $ok++ if $r->{status} == 200 && $r->{json};
        }
        sleep($o{gap}) if $o{gap};
    }
    return $ok;
}

# mock.log lines for a prefix: list of [connection, connection_requests]
sub conns {
    my ($prefix, $n) = @_;
    my @l;
    wait_for(sub {
        @l = grep { m{^/\Q$prefix\E/v1/} } $t->access_log('mock.log');
        @l >= $n;
    }, 5);
    return map { [ (split /\|/)[1, 2] ] } @l;
}

sub distinct { my %h = map { $_->[0] => 1 } @_; scalar keys %h }

for my $c ([ 'ka', 'default keepalive (32)' ], [ 'ka1', 'keepalive 1' ],
           [ 'ups', 'upstream{} with keepalive 4' ])
{
    my ($prefix, $name) = @$c;
    is(sequential($prefix, $N, mixed => 1), $N, "$name: $N sequential requests (stream and non-stream) succeed");
    my @c = conns($prefix, $N);
    is(scalar @c, $N, "$name: the provider saw $N requests");
    my $d = distinct(@c);
    cmp_ok($d, '<', $N, "$name: fewer upstream connections ($d) than requests ($N)");
    my ($max) = sort { $b <=> $a } map { $_->[1] } @c;
    cmp_ok($max // 0, '>', 1, "$name: an upstream connection served several requests");
}

# nokashared: keepalive off on a provider whose address is also used by
# providers with keepalive on (ka, ka1): its requests still get new connections
for my $c ([ 'noka', 'keepalive off' ], [ 'upsnoka', 'upstream{} without keepalive' ],
           [ 'nokashared', 'keepalive off, address shared with keepalive providers' ]) {
    my ($prefix, $name) = @$c;
    is(sequential($prefix, $N, mixed => 1), $N, "$name: $N sequential requests succeed");
    my @c = conns($prefix, $N);
    is(distinct(@c), $N, "$name: each request used a new upstream connection");
    ok(!grep({ $_->[1] != 1 } @c), "$name: one request per upstream connection");
}

# raw providers: connection counting on the provider side
{
    is(sequential('rawka', 5), 5, 'raw keep-alive provider: 5 requests succeed');
    my $n = $raw_ka->connections;
    cmp_ok($n, '<', 5, "raw keep-alive provider: $n connection(s) accepted for 5 requests");
    is(scalar($raw_ka->requests), 5, 'raw keep-alive provider: 5 requests received');

    is(sequential('rawclose', 3), 3, 'provider answering Connection: close: 3 requests succeed');
    is($raw_close->connections, 3, 'provider answering Connection: close: a new connection per request');

    is(sequential('rawidle', 3, gap => 0.6), 3,
       'provider closing idle keepalive connections: every request still succeeds');
}

$t->finish;
done_testing;
