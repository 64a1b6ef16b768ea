#!/usr/bin/perl
# The request body scanner reads strings eight bytes at a time: every byte
# that ends a string's plain run (a control byte, '"', '\') is found at
# every offset from the 8-byte boundaries, next to UTF-8 and DEL bytes that
# do not end it.  Seen from the client: a raw control byte in a string is
# invalid JSON (400 invalid_json), the rest is valid (the mock answers, with
# usage counted from the string's exact length).

use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use LLMTest;

my $t = LLMTest->new;

$t->run(<<'CONF');
http {
    llm_provider mock { url http://127.0.0.1:%%PORT_MOCK%%/v1; key k; }

    server {
        listen 127.0.0.1:%%PORT_MOCK%%;
        location /v1/ { llm_mock; }
    }

    server {
        listen 127.0.0.1:%%PORT_GW%%;
        location /v1/ { llm_pass mock; }
    }
}
CONF

my $gw = $t->port('GW');

# the raw body, with the content string's bytes as given (no JSON encoding)
sub post_raw {
    my ($content) = @_;
    my $body = '{"model":"m","messages":[{"role":"user","content":"' . $content . '"}]}';
    return http_request(port => $gw, method => 'POST', path => '/v1/chat/completions',
                        headers => [ 'Content-Type' => 'application/json' ], body => $body);
}

my %bad_seen;
my %good_seen;

# the string starts at different offsets from an 8-byte boundary (the body's
# prefix is fixed, so the padding moves it), the special byte at each
# offset up to 24 into it
for my $pad (0 .. 7) {
    for my $at (0 .. 24) {
        my $head = ('a' x $pad) . ('b' x $at);

        for my $ctl ("\x00", "\x01", "\x0a", "\x1f") {
            my $r = post_raw($head . $ctl . 'tail-of-the-string');
            $bad_seen{ord $ctl}++ if $r->{status} == 400 && ($r->{json}{error}{code} // '') eq 'invalid_json';
        }

        # bytes that do not end the run: DEL, UTF-8 (2 and 4 bytes), and
        # escapes, which do end it but are valid
        for my $ok ("\x7f", "\xc3\xa9", "\xf0\x9f\x98\x80", '\\"', '\\\\', '\\u00e9', ' ') {
            my $r = post_raw($head . $ok . 'tail-of-the-string');
            $good_seen{$ok}++ if $r->{status} == 200;
        }
    }
}

my $n = 8 * 25;
is($bad_seen{$_}, $n, sprintf('a raw 0x%02x at every offset: 400 invalid_json (%d cases)', $_, $n))
    for 0x00, 0x01, 0x0a, 0x1f;
is($good_seen{"\x7f"}, $n, "DEL at every offset: valid");
is($good_seen{"\xc3\xa9"}, $n, 'a 2-byte UTF-8 character at every offset: valid');
is($good_seen{"\xf0\x9f\x98\x80"}, $n, 'a 4-byte UTF-8 character at every offset: valid');
is($good_seen{'\\"'}, $n, 'an escaped quote at every offset: valid');
is($good_seen{'\\\\'}, $n, 'an escaped backslash at every offset: valid');
is($good_seen{'\\u00e9'}, $n, 'a \\u escape at every offset: valid');

# strings that end exactly on and around the 8-byte steps, and an unclosed
# one whose bytes run to the end of the body in whole words
for my $len (0 .. 17) {
    my $r = post_raw('x' x $len);
    is($r->{status}, 200, "a string of $len bytes: valid");
}
{
    my $r = http_request(port => $gw, method => 'POST', path => '/v1/chat/completions',
                         headers => [ 'Content-Type' => 'application/json' ],
                         body => '{"model":"m","messages":[{"role":"user","content":"' . ('x' x 64));
    error_ok($r, 400, 'invalid_json', 'a string that never ends: 400 invalid_json');
}

$t->finish;
done_testing;
