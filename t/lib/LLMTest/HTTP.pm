package LLMTest::HTTP;

# Minimal HTTP/1.1 client over raw sockets, for the nginx-llm-gateway tests.
#
#   my $r = http_request(port => $p, method => 'POST', path => '/v1/chat/completions',
#                        headers => [ 'X-Foo' => 'bar' ], body => { model => 'm', ... });
#   $r->{status}, $r->{headers}{'content-type'}, $r->{body}, $r->{json}
#
#   my $c = LLMTest::HTTP::Client->new(port => $p);   # keepalive connection reuse
#   my $r = $c->request(method => 'GET', path => '/v1/models');
#
#   my $s = LLMTest::HTTP::Stream->open(port => $p, method => 'POST', path => ..., body => ...);
#   while (defined(my $ev = $s->next_event(5))) { ... $ev->{data}, $ev->{t} ... }
#
# Bodies given as a hash/array reference are JSON encoded.  Responses are
# de-chunked.  Every read has a deadline so that a test never hangs.

use strict;
use warnings;

use IO::Socket::INET;
use IO::Select;
use Socket qw(IPPROTO_TCP TCP_NODELAY SOL_SOCKET SO_LINGER);
use Time::HiRes qw(time sleep);
use JSON::PP ();
use Exporter 'import';

our @EXPORT_OK = qw(http_request http_raw build_request json_encode json_decode
                    Dechunker parse_sse_events);
our %EXPORT_TAGS = (all => \@EXPORT_OK);

my $JSON = JSON::PP->new->canonical(1)->allow_nonref(1);

sub json_encode { $JSON->encode($_[0]) }

sub json_decode {
    my ($text) = @_;
    return undef unless defined $text;
    my $v = eval { $JSON->decode($text) };
    return $@ ? undef : $v;
}

sub connect_to {
    my ($port, $timeout) = @_;
    my $s = IO::Socket::INET->new(
        PeerAddr => '127.0.0.1',
        PeerPort => $port,
        Proto    => 'tcp',
        Timeout  => $timeout // 5,
    ) or return undef;
    $s->autoflush(1);
    setsockopt($s, IPPROTO_TCP, TCP_NODELAY, 1);
    binmode $s;
    return $s;
}

# build_request(method, path, headers => [..] | {..}, body => str|ref, host,
#               keepalive => 0|1, chunked => 0|1|[pieces])
sub build_request {
    my (%a) = @_;
    my $method = $a{method} // 'GET';
    my $path   = $a{path}   // '/';
    my $body   = $a{body};
    my $hdrs   = $a{headers} // [];
    my @h = ref $hdrs eq 'HASH' ? (map { ($_ => $hdrs->{$_}) } sort keys %$hdrs) : @$hdrs;

    my %have;
    for (my $i = 0; $i < @h; $i += 2) { $have{lc $h[$i]} = 1 }

    if (ref $body) {
        $body = json_encode($body);
        push @h, 'Content-Type' => 'application/json' unless $have{'content-type'};
    }

    my $req = "$method $path HTTP/1.1\r\n";
    $req .= "Host: " . ($a{host} // 'localhost') . "\r\n" unless $have{host};
    $req .= "Connection: " . ($a{keepalive} ? 'keep-alive' : 'close') . "\r\n"
        unless $have{connection};

    my $chunked = $a{chunked};
    if (defined $body && !$have{'content-length'} && !$have{'transfer-encoding'}) {
        if ($chunked) {
            push @h, 'Transfer-Encoding' => 'chunked';
        } else {
            push @h, 'Content-Length' => length $body;
        }
    }
    for (my $i = 0; $i < @h; $i += 2) {
        $req .= "$h[$i]: $h[$i+1]\r\n";
    }
    $req .= "\r\n";

    if (defined $body) {
        if ($chunked) {
            my @pieces = ref $chunked eq 'ARRAY' ? @$chunked : ($body);
            for my $p (@pieces) {
                next unless length $p;
                $req .= sprintf("%x\r\n", length $p) . $p . "\r\n";
            }
            $req .= "0\r\n\r\n";
        } else {
            $req .= $body;
        }
    }
    return $req;
}

sub write_all {
    my ($s, $data) = @_;
    local $SIG{PIPE} = 'IGNORE';
    my $off = 0;
    while ($off < length $data) {
        my $n = syswrite($s, $data, length($data) - $off, $off);
        return 0 unless defined $n;
        $off += $n;
    }
    return 1;
}

# ---------------------------------------------------------------------------
# Incremental chunked transfer-encoding decoder.

package LLMTest::HTTP::Dechunker;

sub new { bless { state => 'size', need => 0, done => 0, error => undef }, shift }

# feed(\$raw): consumes from $$raw what it can, returns decoded bytes.
sub feed {
    my ($self, $raw) = @_;
    my $out = '';
    while (!$self->{done} && !$self->{error} && length $$raw) {
        my $st = $self->{state};
        if ($st eq 'size') {
            my $i = index($$raw, "\n");
            last if $i < 0;
            my $line = substr($$raw, 0, $i + 1, '');
            $line =~ s/\r?\n\z//;
            $line =~ s/;.*//;
            $line =~ s/^\s+|\s+$//g;
            if ($line !~ /^[0-9a-fA-F]+$/) {
                $self->{error} = "bad chunk size line '$line'";
                last;
            }
            $self->{need} = hex $line;
            $self->{state} = $self->{need} ? 'data' : 'trailer';
        } elsif ($st eq 'data') {
            my $take = $self->{need} < length $$raw ? $self->{need} : length $$raw;
            $out .= substr($$raw, 0, $take, '');
            $self->{need} -= $take;
            $self->{state} = 'crlf' if $self->{need} == 0;
        } elsif ($st eq 'crlf') {
            my $i = index($$raw, "\n");
            last if $i < 0;
            my $junk = substr($$raw, 0, $i + 1, '');
            if ($junk !~ /^\r?\n\z/) {
                $self->{error} = "garbage after chunk data";
                last;
            }
            $self->{state} = 'size';
        } elsif ($st eq 'trailer') {
            my $i = index($$raw, "\n");
            last if $i < 0;
            my $line = substr($$raw, 0, $i + 1, '');
            $self->{done} = 1 if $line =~ /^\r?\n\z/;
        }
    }
    return $out;
}

sub done  { $_[0]{done} }
sub error { $_[0]{error} }

# ---------------------------------------------------------------------------
# One HTTP connection: write requests, read responses (with deadlines).

package LLMTest::HTTP::Conn;

use Time::HiRes qw(time);

sub new {
    my ($class, %a) = @_;
    my $s = LLMTest::HTTP::connect_to($a{port}, $a{timeout}) or return undef;
    return bless { sock => $s, buf => '', eof => 0, port => $a{port},
                   sel => IO::Select->new($s) }, $class;
}

sub sock { $_[0]{sock} }

# read more bytes into buf; returns number read, 0 on eof, undef on timeout
sub fill {
    my ($self, $deadline) = @_;
    return 0 if $self->{eof};
    my $left = $deadline - time;
    return undef if $left <= 0;
    return undef unless $self->{sel}->can_read($left);
    my $n = sysread($self->{sock}, my $data, 65536);
    if (!$n) {
        $self->{eof} = 1;
        $self->{reset} = 1 if !defined $n;
        return 0;
    }
    $self->{buf} .= $data;
    $self->{last_read} = time;
    return $n;
}

sub send {
    my ($self, $data) = @_;
    return LLMTest::HTTP::write_all($self->{sock}, $data);
}

# returns { status, reason, version, headers, header_lines } or undef (+ $self->{error})
sub read_head {
    my ($self, $deadline) = @_;
    while ($self->{buf} !~ /\r?\n\r?\n/) {
        my $n = $self->fill($deadline);
        if (!defined $n) { $self->{error} = 'timeout reading response header'; return undef }
        if (!$n) { $self->{error} = 'connection closed before response header'; return undef }
    }
    $self->{buf} =~ s/\A(.*?)\r?\n\r?\n//s;
    my @lines = split /\r?\n/, $1;
    my $sl = shift @lines;
    my ($ver, $status, $reason) = $sl =~ m{^HTTP/(\d\.\d)\s+(\d{3})\s*(.*)$};
    if (!$status) { $self->{error} = "bad status line '$sl'"; return undef }
    my (%h, @hl);
    for my $l (@lines) {
        my ($k, $v) = $l =~ /^([^:]+):\s*(.*?)\s*$/ or next;
        push @hl, [$k, $v];
        $k = lc $k;
        $h{$k} = exists $h{$k} ? "$h{$k}, $v" : $v;
    }
    return { version => $ver, status => $status + 0, reason => $reason,
             headers => \%h, header_lines => \@hl };
}

# body framing for a response; sets up $self->{framing}
sub start_body {
    my ($self, $res, $method) = @_;
    my $h = $res->{headers};
    if (($method // '') eq 'HEAD' || $res->{status} == 204 || $res->{status} == 304
        || $res->{status} < 200)
    {
        $self->{framing} = 'none';
    } elsif (($h->{'transfer-encoding'} // '') =~ /chunked/i) {
        $self->{framing} = 'chunked';
        $self->{dechunk} = LLMTest::HTTP::Dechunker->new;
    } elsif (defined $h->{'content-length'}) {
        $self->{framing} = 'length';
        $self->{left} = $h->{'content-length'} + 0;
    } else {
        $self->{framing} = 'close';
    }
    $self->{body_done} = $self->{framing} eq 'none' || ($self->{framing} eq 'length' && !$self->{left});
}

# next piece of decoded body: returns string (possibly ''), or undef when the
# body is finished (check $self->{body_done} / {body_error}), sets {timeout}
sub read_body_piece {
    my ($self, $deadline) = @_;
    while (1) {
        return undef if $self->{body_done} || $self->{body_error} || !$self->{framing};
        my $f = $self->{framing};
        if (length $self->{buf}) {
            if ($f eq 'chunked') {
                my $out = $self->{dechunk}->feed(\$self->{buf});
                if ($self->{dechunk}->error) { $self->{body_error} = $self->{dechunk}->error }
                $self->{body_done} = 1 if $self->{dechunk}->done;
                return $out if length $out;
                next if $self->{body_done} || $self->{body_error};
            } elsif ($f eq 'length') {
                my $take = $self->{left} < length $self->{buf} ? $self->{left} : length $self->{buf};
                my $out = substr($self->{buf}, 0, $take, '');
                $self->{left} -= $take;
                $self->{body_done} = 1 if $self->{left} == 0;
                return $out;
            } else {
                my $out = $self->{buf};
                $self->{buf} = '';
                return $out;
            }
        }
        my $n = $self->fill($deadline);
        if (!defined $n) { $self->{timeout} = 1; return undef }
        if (!$n) {
            if ($f eq 'close') { $self->{body_done} = 1 }
            else { $self->{body_error} = 'connection closed before end of body' }
            return undef;
        }
    }
}

# ---------------------------------------------------------------------------

package LLMTest::HTTP;

# http_request(port, method, path, headers, body, timeout, ...) -> response hash:
#   status, reason, headers (lowercased), header_lines, body, json, complete,
#   error (string, when the exchange failed), time (seconds taken);
#   the connection is closed afterwards unless keep_conn => 1 (then: {conn})
sub http_request {
    my (%a) = @_;
    my $t0 = time;
    my $c = $a{conn} // LLMTest::HTTP::Conn->new(port => $a{port}, timeout => $a{timeout})
        or return { status => 0, error => "connect to $a{port} failed: $!", body => '', headers => {} };
    my $req = defined $a{raw} ? $a{raw} : build_request(%a);
    return exchange($c, $req, %a, t0 => $t0);
}

sub http_raw {
    my ($port, $raw, %a) = @_;
    return http_request(port => $port, raw => $raw, %a);
}

sub exchange {
    my ($c, $req, %a) = @_;
    my $deadline = time + ($a{timeout} // 10);
    if (!$c->send($req)) {
        return { status => 0, error => "send failed: $!", body => '', headers => {}, conn => $c };
    }
    my $res = $c->read_head($deadline);
    if (!$res) {
        return { status => 0, error => $c->{error}, body => '', headers => {}, conn => $c,
                 time => time - $a{t0} };
    }
    $c->start_body($res, $a{method});
    my $body = '';
    while (defined(my $p = $c->read_body_piece($deadline))) { $body .= $p }
    $res->{body} = $body;
    $res->{complete} = $c->{body_done} ? 1 : 0;
    $res->{error} = $c->{body_error} // ($c->{timeout} ? 'timeout reading body' : undef);
    $res->{json} = json_decode($body)
        if ($res->{headers}{'content-type'} // '') =~ m{json}i || $body =~ /^\s*[\{\[]/;
    $res->{time} = time - $a{t0};
    if ($a{keep_conn}) {
        $res->{conn} = $c;
    } elsif (!$a{reuse}) {
        CORE::close $c->{sock};    # like a real client: done with this connection
    }
    return $res;
}

# ---------------------------------------------------------------------------
# Keepalive client: reuses one connection while the server allows it.

package LLMTest::HTTP::Client;

sub new {
    my ($class, %a) = @_;
    return bless { port => $a{port}, conn => undef, connects => 0 }, $class;
}

sub request {
    my ($self, %a) = @_;
    my $t0 = Time::HiRes::time();
    if (!$self->{conn} || $self->{conn}{eof}) {
        $self->{conn} = LLMTest::HTTP::Conn->new(port => $self->{port}, timeout => $a{timeout})
            or return { status => 0, error => "connect failed: $!", body => '', headers => {} };
        $self->{connects}++;
    }
    my $req = LLMTest::HTTP::build_request(%a, keepalive => 1);
    my $res = LLMTest::HTTP::exchange($self->{conn}, $req, %a, t0 => $t0, reuse => 1);
    if (!$res->{complete} || ($res->{headers}{connection} // '') =~ /close/i) {
        CORE::close $self->{conn}{sock};
        $self->{conn} = undef;
    }
    delete $res->{conn};
    return $res;
}

sub connects { $_[0]{connects} }

sub close {
    my ($self) = @_;
    CORE::close $self->{conn}{sock} if $self->{conn};
    $self->{conn} = undef;
}

# ---------------------------------------------------------------------------
# Streaming reader: SSE events with the time each one arrived.

package LLMTest::HTTP::Stream;

use Time::HiRes qw(time);

# open(port, method, path, headers, body, timeout) -> stream object, or a
# stream with {error} set; ->{status}, ->{headers} after the response head.
sub open {
    my ($class, %a) = @_;
    my $self = bless { events => [], body => '', pending => '', t0 => time,
                       timeout => $a{timeout} // 10 }, $class;
    my $c = LLMTest::HTTP::Conn->new(port => $a{port}, timeout => $a{timeout});
    if (!$c) { $self->{error} = "connect failed: $!"; $self->{status} = 0; return $self }
    $self->{conn} = $c;
    $c->send(LLMTest::HTTP::build_request(method => 'POST', %a));
    my $res = $c->read_head(time + $self->{timeout});
    if (!$res) { $self->{error} = $c->{error}; $self->{status} = 0; return $self }
    $self->{t_head} = time;
    $self->{$_} = $res->{$_} for qw(status headers header_lines reason version);
    $c->start_body($res, 'POST');
    return $self;
}

# next complete SSE event (terminated by a blank line): { data => raw event
# text including its terminator, t => arrival time }; undef at the end of the
# body (->finished true), on timeout (->timed_out true) or on error.
sub next_event {
    my ($self, $timeout) = @_;
    my $c = $self->{conn} or return undef;
    my $deadline = time + ($timeout // $self->{timeout});
    $self->{timed_out} = 0;
    while (1) {
        if ($self->{pending} =~ /\A(.*?(?:\r\n\r\n|\n\n|\r\r))/s) {
            my $ev = { data => $1, t => time };
            substr($self->{pending}, 0, length $1, '');
            push @{$self->{events}}, $ev;
            return $ev;
        }
        my $p = $c->read_body_piece($deadline);
        if (!defined $p) {
            if ($c->{timeout}) { $c->{timeout} = 0; $self->{timed_out} = 1; return undef }
            $self->{finished} = 1;
            return undef;
        }
        $self->{body} .= $p;
        $self->{pending} .= $p;
        push @{$self->{pieces}}, [time, length $p];
    }
}

# read everything until the end of the body (or timeout); returns events
sub read_all {
    my ($self, $timeout) = @_;
    my $deadline = time + ($timeout // $self->{timeout});
    while (1) {
        my $left = $deadline - time;
        last if $left <= 0;
        my $ev = $self->next_event($left);
        last unless $ev;
    }
    $self->{t_end} = time;
    $self->close if $self->{finished};    # like a real client
    return $self->{events};
}

sub events    { $_[0]{events} }
sub body      { $_[0]{body} }
sub leftover  { $_[0]{pending} }        # bytes after the last complete event
sub finished  { $_[0]{finished} }
sub timed_out { $_[0]{timed_out} }

# body was properly terminated (last chunk / full content-length / close-delimited)
sub complete  { my $c = $_[0]{conn} || $_[0]{closed_conn}; $c && $c->{body_done} ? 1 : 0 }
sub body_error { my $c = $_[0]{conn} || $_[0]{closed_conn}; $c ? $c->{body_error} : $_[0]{error} }

# the payloads of the data: lines of each event, e.g. ('{"id":...}', '[DONE]')
sub data_payloads {
    my ($self) = @_;
    return LLMTest::HTTP::parse_sse_events(join '', map { $_->{data} } @{$self->{events}});
}

sub close {
    my ($self, %a) = @_;
    my $c = $self->{conn} or return;
    if ($a{reset}) {
        setsockopt($c->{sock}, Socket::SOL_SOCKET(), Socket::SO_LINGER(), pack('ii', 1, 0));
    }
    CORE::close $c->{sock};
    $self->{closed_conn} = $c;
    $self->{conn} = undef;
    $self->{t_closed} = time;
}

package LLMTest::HTTP;

# parse SSE text into a list of data payloads (one per event, multi-line data
# joined with "\n"); comments and other fields are ignored
sub parse_sse_events {
    my ($text) = @_;
    my @out;
    for my $ev (split /\r\n\r\n|\n\n|\r\r/, $text) {
        my @data;
        for my $line (split /\r\n|\n|\r/, $ev) {
            next unless $line =~ /^data:(.*)$/s;
            my $v = $1;
            $v =~ s/^ //;
            push @data, $v;
        }
        push @out, join("\n", @data) if @data;
    }
    return @out;
}

1;
