package LLMTest::Experiment;

# Independent computations for the experiment tests (t/experiment.t): the
# variant a key is assigned to, the signature of a request id, and the
# statistics of the status page.  Written from the definitions, in plain
# Perl (core modules only), to check the module against.
#
#   murmur2(BYTES)                     nginx's ngx_murmur_hash2 (MurmurHash2,
#                                      seed 0 ^ length), unsigned 32-bit
#   assign_variant(EXP, KEY, [NAME, WEIGHT], ...)
#                                      weighted rendezvous hashing: the
#                                      variant with the highest
#                                      ln((murmur2("EXP/KEY/NAME") + 1) / 2^32)
#                                      / WEIGHT, the first on ties
#   sign_id(SECRET, EXP, VARIANT, TS, NONCE)
#                                      "EXP.VARIANT.TS.NONCE.SIG", SIG the first
#                                      32 hex digits of HMAC-SHA256
#   json_string(BYTES)                 the JSON string literal of BYTES
#   erfc(X)                            the complementary error function
#   ztest(X0, N0, X1, N1)              two-proportion z-test, pooled variance:
#                                      (z, two-sided p)
#   lift_ci(X0, N0, X1, N1)            (lift, low, high): p1/p0 - 1 and its 95%
#                                      interval by the delta method on ln(p1/p0)
#   sample_needed(P0, MDE, N0, N1)     per-arm n still needed (alpha 0.05
#                                      two-sided, power 0.8)
#   msprt_p(MDE, [ARM, OUTCOME], ...)  the always-valid mSPRT p-value after the
#                                      outcomes in that order (ARM 0 control,
#                                      1 the variant): the running minimum of
#                                      1/Lambda, at most 1
#   chisq(\@observed, \@expected)      Pearson's statistic

use strict;
use warnings;

use POSIX ();
use Digest::SHA qw(hmac_sha256_hex);
use Exporter 'import';

our @EXPORT_OK = qw(murmur2 assign_variant sign_id json_string erfc ztest lift_ci
                    sample_needed msprt_p chisq);
our %EXPORT_TAGS = (all => \@EXPORT_OK);

use constant PI => 4 * atan2(1, 1);

# a * b mod 2^32, exact with 64-bit integers (a, b < 2^32)
sub _mul32 {
    my ($a, $b) = @_;
    return ((($a & 0xffff) * $b) + (((($a >> 16) * $b) & 0xffff) << 16)) & 0xffffffff;
}

sub murmur2 {
    my ($data) = @_;
    my $m = 0x5bd1e995;
    my $len = length $data;
    my $h = $len & 0xffffffff;
    my $i = 0;
    while ($len - $i >= 4) {
        my $k = unpack 'V', substr($data, $i, 4);
        $k = _mul32($k, $m);
        $k ^= $k >> 24;
        $k = _mul32($k, $m);
        $h = _mul32($h, $m);
        $h ^= $k;
        $i += 4;
    }
    my $rest = $len - $i;
    $h ^= ord(substr($data, $i + 2, 1)) << 16 if $rest >= 3;
    $h ^= ord(substr($data, $i + 1, 1)) << 8 if $rest >= 2;
    if ($rest >= 1) {
        $h ^= ord(substr($data, $i, 1));
        $h = _mul32($h, $m);
    }
    $h ^= $h >> 13;
    $h = _mul32($h, $m);
    $h ^= $h >> 15;
    return $h;
}

sub assign_variant {
    my ($exp, $key, @variants) = @_;
    my ($best, $score);
    for my $v (@variants) {
        my ($name, $weight) = @$v;
        my $u = (murmur2("$exp/$key/$name") + 1) / 4294967296;
        my $s = log($u) / $weight;
        if (!defined $score || $s > $score) {
            ($best, $score) = ($name, $s);
        }
    }
    return $best;
}

sub sign_id {
    my ($secret, $exp, $variant, $ts, $nonce) = @_;
    my $data = "$exp.$variant.$ts.$nonce";
    return "$data." . substr(hmac_sha256_hex($data, $secret), 0, 32);
}

sub json_string {
    my ($s) = @_;
    $s =~ s/(["\\])/\\$1/g;
    $s =~ s/\n/\\n/g;
    $s =~ s/\r/\\r/g;
    $s =~ s/\t/\\t/g;
    $s =~ s/([\x00-\x1f])/sprintf '\\u%04x', ord $1/ge;
    return qq("$s");
}

# erf by its Taylor series below 2.5, erfc by its continued fraction above
sub erfc {
    my ($x) = @_;
    return 2 - erfc(-$x) if $x < 0;
    if ($x < 2.5) {
        my ($sum, $term, $x2) = ($x, $x, $x * $x);
        for my $n (1 .. 300) {
            $term *= -$x2 / $n;
            my $t = $term / (2 * $n + 1);
            $sum += $t;
            last if abs($t) < 1e-18;
        }
        return 1 - 2 / sqrt(PI) * $sum;
    }
    my $f = $x;
    for (my $k = 200; $k >= 1; $k--) {
        $f = $x + ($k / 2) / $f;
    }
    return exp(-$x * $x) / sqrt(PI) / $f;
}

sub ztest {
    my ($x0, $n0, $x1, $n1) = @_;
    my ($p0, $p1) = ($x0 / $n0, $x1 / $n1);
    my $pp = ($x0 + $x1) / ($n0 + $n1);
    my $se = sqrt($pp * (1 - $pp) * (1 / $n0 + 1 / $n1));
    my $z = ($p1 - $p0) / $se;
    return ($z, erfc(abs($z) / sqrt(2)));
}

sub lift_ci {
    my ($x0, $n0, $x1, $n1) = @_;
    my ($p0, $p1) = ($x0 / $n0, $x1 / $n1);
    my $se = sqrt((1 - $p1) / ($n1 * $p1) + (1 - $p0) / ($n0 * $p0));
    my $l = log($p1 / $p0);
    return ($p1 / $p0 - 1, exp($l - 1.96 * $se) - 1, exp($l + 1.96 * $se) - 1);
}

sub sample_needed {
    my ($p0, $mde, $n0, $n1) = @_;
    my $p1 = $p0 * (1 + $mde);
    my $pb = ($p0 + $p1) / 2;
    my $a = 1.959964 * sqrt(2 * $pb * (1 - $pb))
          + 0.841621 * sqrt($p0 * (1 - $p0) + $p1 * (1 - $p1));
    my $n = $a * $a / (($p1 - $p0) ** 2) - ($n0 < $n1 ? $n0 : $n1);
    return $n <= 0 ? 0 : POSIX::ceil($n);
}

sub msprt_p {
    my ($mde, @events) = @_;
    my @n = (0, 0);
    my @x = (0, 0);
    my $p = 1;
    for my $e (@events) {
        my ($arm, $outcome) = @$e;
        $n[$arm]++;
        $x[$arm] += $outcome;
        next unless $n[0] && $n[1];
        my ($p0, $p1) = ($x[0] / $n[0], $x[1] / $n[1]);
        my $v = $p1 * (1 - $p1) / $n[1] + $p0 * (1 - $p0) / $n[0];
        next unless $v > 0;
        my $tau2 = ($mde * $p0) ** 2;
        $tau2 = 1 if $tau2 > 1;
        my $d = $p1 - $p0;
        my $lambda = sqrt($v / ($v + $tau2)) * exp($tau2 * $d * $d / (2 * $v * ($v + $tau2)));
        $p = 1 / $lambda if 1 / $lambda < $p;
    }
    return $p;
}

sub chisq {
    my ($obs, $exp) = @_;
    my $c = 0;
    $c += ($obs->[$_] - $exp->[$_]) ** 2 / $exp->[$_] for 0 .. $#$obs;
    return $c;
}

1;
