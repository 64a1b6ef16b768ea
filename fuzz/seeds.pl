#!/usr/bin/perl
# The seed corpora of the harnesses, from the test fixtures.
#
#   perl fuzz/seeds.pl OUTDIR
#
# writes OUTDIR/request, sse, stream, usage and price: the client requests,
# provider replies, usage objects and price tables of t/fixtures, each
# with the input header its harness reads (see fuzz/fuzz.h): an options
# byte, and for the harnesses that cut their input, the cuts.  Streamed
# replies are given whole and cut at a few spread positions.

use strict;
use warnings;

use JSON::PP;
use File::Basename qw(dirname basename);
use File::Path qw(make_path);

my $out = shift or die "usage: $0 OUTDIR\n";
my $root = dirname(dirname(__FILE__));
my $fixtures = "$root/t/fixtures";

make_path("$out/$_") for qw(request sse stream usage price);

my $json = JSON::PP->new->canonical;
my %n;

sub put {
    my ($harness, $name, $bytes) = @_;
    my $file = sprintf "%s/%s/%s", $out, $harness, $name;
    open my $fh, '>:raw', $file or die "$file: $!";
    print $fh $bytes;
    close $fh;
    $n{$harness}++;
}

# the header of a harness that cuts its input: options, cuts, data

sub cut {
    my ($options, $data, @cuts) = @_;
    return pack('CC', $options, scalar @cuts)
        . join('', map { pack 'v', $_ } @cuts) . $data;
}

# n cuts spread over the data, and the same around every "usage"

sub spread {
    my ($data, $n) = @_;
    my $len = length $data or return ();
    return grep { $_ < 65536 } map { int($len * $_ / ($n + 1)) } 1 .. $n;
}

sub around {
    my ($data, $word) = @_;
    my @cuts;
    my $pos = 0;
    while (($pos = index($data, $word, $pos)) >= 0 && @cuts < 30) {
        push @cuts, $pos + 1, $pos + length($word) + 3;
        $pos++;
    }
    return grep { $_ < 65536 } @cuts;
}

my %endpoint = (chat => 0, embeddings => 1, messages => 2);
my %dialect = (openai => 0, anthropic => 1, gemini => 2);
my %container = (openai => 'usage', anthropic => 'usage',
                 gemini => 'usageMetadata');

for my $file (sort glob "$fixtures/usage/*.json") {
    my $name = basename($file, '.json');
    open my $fh, '<:raw', $file or die "$file: $!";
    my $f = decode_json(do { local $/; <$fh> });

    # the payloads as the bytes sent
    utf8::encode($f->{$_}) for grep { defined $f->{$_} }
                                 qw(request_body response);

    my $format = $f->{format};
    my $response = $f->{response} // '';
    my $sse = ($f->{content_type} // '') =~ m{text/event-stream};

    # the client's request

    if (defined $f->{request_body} && exists $endpoint{$f->{endpoint}}) {
        my $e = $endpoint{$f->{endpoint}};
        put('request', "$name", pack('C', $e) . $f->{request_body});
        put('request', "$name-alias", pack('C', $e | 4 | 16)
                                      . $f->{request_body});
    }

    # the reply: a usage object, an event, a body in pieces

    my $d = $dialect{$format} // 0;
    my $array = !$sse && $f->{stream};

    put('usage', "$name", cut($d | ($array ? 4 : 0), $response));
    put('usage', "$name-cut",
        cut($d | ($array ? 4 : 0), $response,
            around($response, $container{$format})));

    if (!$sse) {
        my $body = eval { decode_json($response) };
        my @objects = ref $body eq 'ARRAY' ? @$body : ($body);
        my $i = 0;
        for my $o (@objects) {
            next unless ref $o eq 'HASH';
            my $u = $o->{$container{$format}};
            next unless ref $u eq 'HASH';
            put('usage', "$name-object-" . $i++, cut($d, $json->encode($u)));
        }
        next;
    }

    # a stream: the SSE parser, and the relay of each format

    for my $cuts ([], [spread($response, 7)],
                  [around($response, $container{$format})])
    {
        my $v = scalar @$cuts;
        put('sse', "$name-$v", cut(0, $response, @$cuts));

        if ($format eq 'openai') {
            put('stream', "$name-strip-$v", cut(0, $response, @$cuts));
            put('stream', "$name-$v", cut(1, $response, @$cuts));
        } else {
            put('stream', "$name-$v",
                cut($format eq 'anthropic' ? 2 : 3, $response, @$cuts));
        }
    }
}

# prices: the LiteLLM-shaped table, alone and after llm_price lines

open my $pf, '<:raw', "$fixtures/usage-prices.json" or die $!;
my $table = do { local $/; <$pf> };
put('price', 'usage-prices', pack('C', 0) . $table);

open my $cf, '<', "$fixtures/usage-prices.conf" or die $!;
my $i = 0;
while (<$cf>) {
    next unless /^\s*llm_price\s+(.*?);/;
    put('price', 'usage-prices-line-' . $i++, pack('C', 1) . "$1\n" . $table);
}

printf "seeds: %s\n", join ', ', map { "$_ $n{$_}" } sort keys %n;
