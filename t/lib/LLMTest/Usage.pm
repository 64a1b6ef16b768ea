package LLMTest::Usage;

# Helpers for the usage, cost and zone tests: the fixture corpus
# (t/fixtures/usage/*.json), prices (llm_price lines and LiteLLM-shaped
# files) as exact integers of 1e-12 USD per token, exact decimal USD
# arithmetic, access log parsing and the llm_status page.
#
#   use LLMTest::Usage qw(:all);
#   my @fx = load_fixtures("$FindBin::Bin/fixtures/usage");
#   my $prices = load_prices(conf => $conf_file, json => $json_file);
#   my $price = price_lookup($prices, $upstream_model, $provider, $client_model);
#   my $pico = cost_pico($price, { input => .., cache_read => .., ... });
#   pico_to_usd($pico)  -> "0.00001215"        usd_to_pico("0.00001215") -> BigInt
#
# Costs are Math::BigInt numbers of pico-USD (1e-12 USD): sums are exact.

use strict;
use warnings;

use JSON::PP ();
use Encode ();
use Math::BigInt;
use Math::BigFloat;
use Exporter 'import';

our @EXPORT_OK = qw(load_fixtures load_prices price_lookup cost_pico pico_to_usd usd_to_pico
                    read_bytes parse_log status_json status_decode ceil_div4 COUNTERS);
our %EXPORT_TAGS = (all => \@EXPORT_OK);

use constant COUNTERS => qw(input cache_read cache_write output reasoning);

my $JSON_BYTES = JSON::PP->new->utf8(1)->allow_bignum(1);

sub read_bytes {
    my ($path) = @_;
    open my $fh, '<', $path or die "$path: $!";
    binmode $fh;
    local $/;
    my $c = <$fh>;
    return $c // '';
}

# every fixture of a directory, sorted by file name; the strings that are
# wire bytes (request_body, response, client_response) are turned back into
# bytes (the files are UTF-8 JSON)
sub load_fixtures {
    my ($dir) = @_;
    opendir my $dh, $dir or die "$dir: $!";
    my @out;
    for my $f (sort grep { /\.json\z/ } readdir $dh) {
        my $fx = $JSON_BYTES->decode(read_bytes("$dir/$f"));
        for my $k (qw(request_body response client_response)) {
            next unless defined $fx->{$k};
            $fx->{$k} = Encode::encode('UTF-8', $fx->{$k});
        }
        $fx->{file} = $f;
        $fx->{name} //= $f =~ s/\.json\z//r;
        push @out, $fx;
    }
    return @out;
}

sub ceil_div4 { my ($n) = @_; return int(($n + 3) / 4) }

# ---------------------------------------------------------------------------
# money

# "0.00001215" (USD) -> Math::BigInt of 1e-12 USD; dies on more than 12 decimals
sub usd_to_pico {
    my ($s) = @_;
    $s = "$s";
    die "not a plain decimal: '$s'\n" unless $s =~ /\A(\d+)(?:\.(\d{1,12}))?\z/;
    my ($int, $frac) = ($1, $2 // '');
    $frac .= '0' x (12 - length $frac);
    return Math::BigInt->new($int) * Math::BigInt->new('1000000000000') + Math::BigInt->new("1$frac")
           - Math::BigInt->new('1000000000000');
}

# Math::BigInt of 1e-12 USD -> the spec's format: plain decimal, trailing
# zeros dropped, "0" for zero
sub pico_to_usd {
    my ($p) = @_;
    $p = Math::BigInt->new("$p");
    my ($q, $r) = $p->copy->bdiv(Math::BigInt->new('1000000000000'));
    return "$q" if $r->is_zero;
    my $frac = sprintf '%012s', "$r";
    $frac =~ s/0+\z//;
    return "$q.$frac";
}

# a decimal number (string, or Math::BigFloat) of USD per token -> pico, rounded
sub _per_token_pico {
    my ($v) = @_;
    my $f = Math::BigFloat->new("$v") * Math::BigFloat->new('1000000000000');
    $f->badd(Math::BigFloat->new('0.5'))->bfloor;
    return Math::BigInt->new($f->bstr =~ s/\..*//r);
}

# USD per million tokens, at most 6 decimals -> pico per token
sub _per_million_pico {
    my ($v) = @_;
    die "bad price '$v'\n" unless $v =~ /\A(\d+)(?:\.(\d{1,6}))?\z/;
    my ($int, $frac) = ($1, $2 // '');
    $frac .= '0' x (6 - length $frac);
    return Math::BigInt->new($int) * 1000000 + Math::BigInt->new($frac eq '' ? 0 : "1$frac") - 1000000;
}

# load_prices(conf => FILE with llm_price lines, json => LiteLLM-shaped FILE)
# -> { MODEL => { input, output, cache_read, cache_write, reasoning } (pico) }
# following the spec: llm_price wins over the file, entries without both
# input and output prices are unpriced, missing cache prices = input,
# missing reasoning price = output
sub load_prices {
    my (%a) = @_;
    my %p;
    if ($a{json}) {
        my $j = $JSON_BYTES->decode(read_bytes($a{json}));
        my %map = (input_cost_per_token => 'input', output_cost_per_token => 'output',
                   cache_read_input_token_cost => 'cache_read',
                   cache_creation_input_token_cost => 'cache_write',
                   output_cost_per_reasoning_token => 'reasoning');
        for my $m (keys %$j) {
            next if $m eq 'sample_spec' || ref $j->{$m} ne 'HASH';
            my %e;
            for my $k (keys %map) {
                $e{$map{$k}} = _per_token_pico($j->{$m}{$k}) if defined $j->{$m}{$k};
            }
            $p{$m} = \%e;
        }
    }
    if ($a{conf}) {
        for my $l (split /\n/, read_bytes($a{conf})) {
            next unless $l =~ /^\s*llm_price\s+(\S+)\s+(.*?);\s*$/;
            my ($m, %e) = ($1);
            for my $kv (split ' ', $2) {
                my ($k, $v) = split /=/, $kv, 2;
                $e{$k} = _per_million_pico($v);
            }
            $p{$m} = \%e;
        }
    }
    for my $m (keys %p) {
        my $e = $p{$m};
        if (!defined $e->{input} || !defined $e->{output}) { delete $p{$m}; next }
        $e->{cache_read}  //= $e->{input};
        $e->{cache_write} //= $e->{input};
        $e->{reasoning}   //= $e->{output};
    }
    return \%p;
}

# the spec's lookup order: upstream model, "provider/upstream model", client model
sub price_lookup {
    my ($prices, $upstream, $provider, $client) = @_;
    for my $k ($upstream, (defined $provider && defined $upstream ? "$provider/$upstream" : ()), $client) {
        return $prices->{$k} if defined $k && $prices->{$k};
    }
    return undef;
}

sub cost_pico {
    my ($price, $u) = @_;
    my %n = map { $_ => Math::BigInt->new("$u->{$_}") } COUNTERS;
    return $price->{input} * ($n{input} - $n{cache_read} - $n{cache_write})
         + $price->{cache_read} * $n{cache_read}
         + $price->{cache_write} * $n{cache_write}
         + $price->{output} * ($n{output} - $n{reasoning})
         + $price->{reasoning} * $n{reasoning};
}

# ---------------------------------------------------------------------------
# access log and status page

# parse_log(\@field_names, @lines) -> list of hashes ("|"-separated fields)
sub parse_log {
    my ($names, @lines) = @_;
    my @out;
    for my $l (@lines) {
        my @f = split /\|/, $l, -1;
        my %h;
        @h{@$names} = @f;
        $h{_line} = $l;
        push @out, \%h;
    }
    return @out;
}

# the status page decoded with exact numbers (costs as Math::BigFloat)
sub status_decode {
    my ($body) = @_;
    my $v = eval { $JSON_BYTES->decode($body) };
    return $@ ? undef : $v;
}

sub status_json {
    my ($port, $path) = @_;
    my $r = LLMTest::HTTP::http_request(port => $port, method => 'GET', path => $path // '/status');
    return ($r, status_decode($r->{body}));
}

1;
