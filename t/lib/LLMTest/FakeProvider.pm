package LLMTest::FakeProvider;

# A raw-socket fake LLM provider, run as a forked daemon.
#
#   my $fp = LLMTest::FakeProvider->new(
#       dir     => $t->dir,               # where requests/events are recorded
#       port    => $t->port('RAW'),
#       handler => sub {
#           my ($req, $ctx) = @_;         # parsed request; $ctx->{conn}, $ctx->{n}
#           return [ [ send => "HTTP/1.1 200 OK\r\n..." ], [ sleep => 0.1 ], [ 'close' ] ];
#       },
#   );
#
# Each accepted connection is served by its own forked process: requests are
# read (Content-Length or chunked bodies), recorded raw to files, and the
# handler's action list is executed.  Actions:
#
#   [ send   => BYTES ]                 write the bytes
#   [ pieces => [BYTES, ...], DELAY ]   write each piece, sleeping DELAY s between
#   [ sleep  => SECONDS ]
#   [ 'reset' ]                         close with SO_LINGER 0 (TCP RST)
#   [ 'close' ]                         orderly close
#   [ stall  => SECONDS ]               send nothing, keep the connection open
#   [ wait_eof => SECONDS ]             wait for the peer to close; records "eof"
#                                       or "no_eof" in the event log
#   [ drip => BYTES, INTERVAL, MAX ]    send BYTES every INTERVAL s, up to MAX
#                                       times, until the peer goes away; records
#                                       "eof" / "send_failed" / "drip_done"
#   [ 'keepalive' ]                     after the actions, read the next request
#                                       on the same connection
#
# Without 'keepalive' the connection is closed after the actions.
# Helpers: requests() (all recorded requests, in order), connections()
# (number accepted), events() (event log lines "NAME conn=N t=TIME ...").

use strict;
use warnings;

use IO::Socket::INET;
use IO::Select;
use POSIX ();
use Socket qw(IPPROTO_TCP TCP_NODELAY SOL_SOCKET SO_LINGER);
use Time::HiRes qw(time sleep);
use File::Path qw(make_path);
use LLMTest::HTTP ();

our @ALL;

sub new {
    my ($class, %a) = @_;
    my $dir = "$a{dir}/fake-$a{port}";
    make_path($dir);
    my $self = bless { %a, rdir => $dir }, $class;

    my $ls = IO::Socket::INET->new(
        LocalAddr => '127.0.0.1', LocalPort => $a{port}, Proto => 'tcp',
        Listen => 128, ReuseAddr => 1,
    ) or die "fake provider: cannot listen on $a{port}: $!";

    $self->{parent} = $$;
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if ($pid == 0) {
        eval { $self->_daemon($ls) };
        print STDERR "fake provider daemon: $@" if $@;
        POSIX::_exit(0);
    }
    close $ls;
    $self->{pid} = $pid;
    push @ALL, $self;
    return $self;
}

sub port { $_[0]{port} }
sub dir  { $_[0]{rdir} }

sub _log {
    my ($self, $line) = @_;
    open my $fh, '>>', "$self->{rdir}/events" or return;
    syswrite $fh, sprintf("%s t=%.6f\n", $line, time);
    close $fh;
}

sub _daemon {
    my ($self, $ls) = @_;
    setpgrp(0, 0);
    $SIG{CHLD} = 'IGNORE';
    $SIG{PIPE} = 'IGNORE';
    $SIG{TERM} = sub { POSIX::_exit(0) };
    my $conn = 0;
    my $parent = $self->{parent};
    my $sel = IO::Select->new($ls);
    while (1) {
        # exit when the test process is gone (killed without cleanup)
        POSIX::_exit(0) if getppid() != $parent;
        next unless $sel->can_read(1);
        my $s = $ls->accept or next;
        $conn++;
        $self->_log("accept conn=$conn");
        my $pid = fork;
        if (!defined $pid) { close $s; next }
        if ($pid == 0) {
            close $ls;
            eval { $self->_serve($s, $conn) };
            $self->_log("handler_error conn=$conn err=" . ($@ =~ s/\s+/ /gr)) if $@;
            POSIX::_exit(0);
        }
        close $s;
    }
}

# read one request: returns hash or undef on EOF/timeout
sub _read_request {
    my ($self, $s, $bufref, $timeout) = @_;
    my $sel = IO::Select->new($s);
    my $deadline = time + $timeout;
    my $fill = sub {
        my $left = $deadline - time;
        return undef if $left <= 0 || !$sel->can_read($left);
        my $n = sysread($s, my $d, 65536);
        return 0 unless $n;
        $$bufref .= $d;
        return $n;
    };
    while ($$bufref !~ /\r?\n\r?\n/) {
        my $n = $fill->();
        return (undef, defined $n ? 'eof' : 'timeout') unless $n;
    }
    $$bufref =~ s/\A(.*?\r?\n\r?\n)//s;
    my $head = $1;
    my @lines = split /\r?\n/, $head;
    my $rl = shift @lines;
    my ($method, $path, $ver) = split / /, $rl, 3;
    my (%h, @hl);
    for my $l (@lines) {
        my ($k, $v) = $l =~ /^([^:]+):\s*(.*?)\s*$/ or next;
        push @hl, [$k, $v];
        $h{lc $k} = exists $h{lc $k} ? "$h{lc $k}, $v" : $v;
    }
    my $body = '';
    my $rawbody = '';
    if (($h{'transfer-encoding'} // '') =~ /chunked/i) {
        my $d = LLMTest::HTTP::Dechunker->new;
        while (1) {
            my $before = $$bufref;
            $body .= $d->feed($bufref);
            $rawbody .= substr($before, 0, length($before) - length($$bufref));
            last if $d->done || $d->error;
            my $n = $fill->();
            last unless $n;
        }
    } elsif (my $cl = $h{'content-length'}) {
        while (length $$bufref < $cl) {
            my $n = $fill->();
            last unless $n;
        }
        $body = substr($$bufref, 0, $cl, '');
        $rawbody = $body;
    }
    return {
        request_line => $rl, method => $method, path => $path, version => $ver,
        headers => \%h, header_lines => \@hl, body => $body,
        raw => $head . $rawbody, json => LLMTest::HTTP::json_decode($body),
    };
}

sub _serve {
    my ($self, $s, $conn) = @_;
    setsockopt($s, IPPROTO_TCP, TCP_NODELAY, 1);
    binmode $s;
    my $buf = '';
    my $n = 0;
    while (1) {
        my ($req, $why) = $self->_read_request($s, \$buf, $self->{read_timeout} // 60);
        if (!$req) {
            $self->_log("no_request conn=$conn n=$n why=$why");
            last;
        }
        $n++;
        open my $fh, '>', sprintf("%s/req-%05d-%03d", $self->{rdir}, $conn, $n);
        binmode $fh;
        print $fh $req->{raw};
        close $fh;
        $self->_log("request conn=$conn n=$n");

        my $actions = $self->{handler}->($req, { conn => $conn, n => $n }) || [];
        my $keepalive = 0;
        for my $a (@$actions) {
            my ($op, @arg) = @$a;
            if ($op eq 'send') {
                return $self->_log("send_failed conn=$conn") unless _write($s, $arg[0]);
            } elsif ($op eq 'pieces') {
                my ($pieces, $delay) = @arg;
                for my $i (0 .. $#$pieces) {
                    sleep $delay if $i && $delay;
                    return $self->_log("send_failed conn=$conn") unless _write($s, $pieces->[$i]);
                }
            } elsif ($op eq 'sleep' || $op eq 'stall') {
                sleep($arg[0] // 60);
            } elsif ($op eq 'reset') {
                setsockopt($s, SOL_SOCKET, SO_LINGER, pack('ii', 1, 0));
                close $s;
                $self->_log("reset conn=$conn");
                return;
            } elsif ($op eq 'close') {
                close $s;
                $self->_log("close conn=$conn");
                return;
            } elsif ($op eq 'wait_eof') {
                my $r = _wait_eof($s, $arg[0] // 10);
                $self->_log("$r conn=$conn");
                return if $r eq 'eof';
            } elsif ($op eq 'drip') {
                my ($bytes, $interval, $max) = @arg;
                my $r = 'drip_done';
                for (1 .. ($max // 100)) {
                    my $e = _wait_eof($s, $interval);
                    if ($e eq 'eof') { $r = 'eof'; last }
                    if (!_write($s, $bytes)) { $r = 'send_failed'; last }
                }
                $self->_log("$r conn=$conn");
                return if $r ne 'drip_done';
            } elsif ($op eq 'keepalive') {
                $keepalive = 1;
            } else {
                die "unknown action $op";
            }
        }
        last unless $keepalive;
    }
    close $s;
    $self->_log("close conn=$conn");
}

sub _write {
    my ($s, $data) = @_;
    my $off = 0;
    while ($off < length $data) {
        my $n = syswrite($s, $data, length($data) - $off, $off);
        return 0 unless defined $n;
        $off += $n;
    }
    return 1;
}

# wait up to $timeout for the peer to close; data sent by the peer is ignored
sub _wait_eof {
    my ($s, $timeout) = @_;
    my $sel = IO::Select->new($s);
    my $deadline = time + $timeout;
    while (1) {
        my $left = $deadline - time;
        return 'no_eof' if $left <= 0;
        next unless $sel->can_read($left);
        my $n = sysread($s, my $d, 65536);
        return 'eof' unless $n;
    }
}

# ---- inspection (parent side) ---------------------------------------------

sub requests {
    my ($self) = @_;
    opendir my $dh, $self->{rdir} or return ();
    my @files = sort grep { /^req-/ } readdir $dh;
    my @out;
    for my $f (@files) {
        open my $fh, '<', "$self->{rdir}/$f" or next;
        binmode $fh;
        local $/;
        my $raw = <$fh>;
        my $buf = $raw;
        my ($req) = $self->_parse_recorded(\$buf);
        next unless $req;
        $req->{raw} = $raw;
        ($req->{conn}, $req->{n}) = $f =~ /^req-(\d+)-(\d+)/;
        $req->{conn} += 0; $req->{n} += 0;
        push @out, $req;
    }
    return @out;
}

sub _parse_recorded {
    my ($self, $bufref) = @_;
    # re-parse a recorded raw request (complete, no socket needed)
    my $raw = $$bufref;
    return undef unless $raw =~ s/\A(.*?\r?\n\r?\n)//s;
    my $head = $1;
    my @lines = split /\r?\n/, $head;
    my $rl = shift @lines;
    my ($method, $path, $ver) = split / /, $rl, 3;
    my (%h, @hl);
    for my $l (@lines) {
        my ($k, $v) = $l =~ /^([^:]+):\s*(.*?)\s*$/ or next;
        push @hl, [$k, $v];
        $h{lc $k} = exists $h{lc $k} ? "$h{lc $k}, $v" : $v;
    }
    my $body = $raw;
    if (($h{'transfer-encoding'} // '') =~ /chunked/i) {
        my $d = LLMTest::HTTP::Dechunker->new;
        $body = $d->feed(\$raw);
    }
    return {
        request_line => $rl, method => $method, path => $path, version => $ver,
        headers => \%h, header_lines => \@hl, body => $body,
        json => LLMTest::HTTP::json_decode($body),
    };
}

sub last_request { my @r = $_[0]->requests; $r[-1] }

sub events {
    my ($self) = @_;
    open my $fh, '<', "$self->{rdir}/events" or return ();
    chomp(my @l = <$fh>);
    return @l;
}

sub connections {
    my ($self) = @_;
    return scalar grep { /^accept / } $self->events;
}

# wait until an event matching $re is logged; returns the line or undef
sub wait_event {
    my ($self, $re, $timeout) = @_;
    my $deadline = time + ($timeout // 5);
    while (time < $deadline) {
        my ($l) = grep { $_ =~ $re } $self->events;
        return $l if defined $l;
        sleep 0.05;
    }
    return undef;
}

# forget recorded requests and events (between sub-tests)
sub reset_log {
    my ($self) = @_;
    opendir my $dh, $self->{rdir} or return;
    unlink map { "$self->{rdir}/$_" } grep { /^(req-|events)/ } readdir $dh;
}

sub stop {
    my ($self) = @_;
    return unless $self->{pid};
    kill 'TERM', -$self->{pid};
    kill 'TERM', $self->{pid};
    waitpid $self->{pid}, 0;
    $self->{pid} = undef;
}

# ---- response builders -------------------------------------------------------

# http_response(status, headers => [..], body => ..., framing => length|chunked|close,
#               chunks => [...] (for chunked: explicit chunk data list))
# returns the full wire bytes
sub http_response {
    my (%a) = @_;
    my $status = $a{status} // 200;
    my %reason = (200 => 'OK', 400 => 'Bad Request', 401 => 'Unauthorized',
                  429 => 'Too Many Requests', 500 => 'Internal Server Error',
                  503 => 'Service Unavailable');
    my $framing = $a{framing} // 'length';
    my $body = $a{body} // '';
    my $r = "HTTP/1.1 $status " . ($reason{$status} // 'Status') . "\r\n";
    my @h = @{$a{headers} // []};
    for (my $i = 0; $i < @h; $i += 2) { $r .= "$h[$i]: $h[$i+1]\r\n" }
    if ($framing eq 'length') {
        $r .= "Content-Length: " . length($body) . "\r\n";
    } elsif ($framing eq 'chunked') {
        $r .= "Transfer-Encoding: chunked\r\n";
    }
    $r .= "Connection: " . ($a{keepalive} ? 'keep-alive' : 'close') . "\r\n" unless $a{no_connection_header};
    $r .= "\r\n";
    if ($framing eq 'chunked') {
        my @chunks = $a{chunks} ? @{$a{chunks}} : ($body);
        for my $c (@chunks) {
            next unless length $c;
            $r .= sprintf("%x\r\n", length $c) . $c . "\r\n";
        }
        $r .= "0\r\n\r\n";
    } else {
        $r .= $body;
    }
    return $r;
}

END {
    # only the process that created the daemons stops them (not a test's
    # forked child), and its exit status stays as it was
    my $status = $?;
    for my $fp (@ALL) { $fp->stop if $fp->{pid} && $$ == $fp->{parent} }
    $? = $status;
}

1;
