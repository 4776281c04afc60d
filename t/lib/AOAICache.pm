package AOAICache;

# Real shared caches for the tests of AOAISharedCache: a redis-server and a
# memcached from Debian's packages, and a "blackhole" that accepts
# connections and never answers (a cache that is up but hung).  Each
# listens on 127.0.0.1 only, is started by fork/exec and stopped by the PID
# it was given.

use strict;
use warnings;
use Exporter 'import';
use File::Temp qw(tempdir);
use IO::Socket::INET;
use POSIX ();
use Time::HiRes qw(time sleep);
use Digest::SHA qw(sha256_hex);
use AOAITest ();

our @EXPORT = qw(start_redis start_memcached start_blackhole cache_key);

# The key AOAISharedCache stores a member's window under, as the socache
# provider writes it: its namespace, then the id in hex.
sub cache_key {
    my ($balancer, $member) = @_;
    return 'aoai-balancer:' . substr(sha256_hex("$balancer\0$member"), 0, 32);
}

sub new_server {
    my ($class, %o) = @_;
    my $self = bless { port => AOAITest::free_port(),
                       dir => tempdir("aoai-$o{name}-XXXXXX", TMPDIR => 1,
                                      CLEANUP => 1), %o }, $class;
    $self->start;
    return $self;
}

sub port { $_[0]{port} }

sub start {
    my ($self) = @_;
    my @command = $self->command;
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        open STDOUT, '>>', "$self->{dir}/log";
        open STDERR, '>&', \*STDOUT;
        exec @command or POSIX::_exit(127);
    }
    $self->{pid} = $pid;
    AOAITest::wait_until("$self->{name} to answer", 10, sub { $self->ready });
    return $self;
}

sub stop {
    my ($self) = @_;
    my $pid = delete $self->{pid} or return;
    kill 'TERM', $pid;
    my $deadline = time + 10;
    while (time < $deadline) {
        last if waitpid($pid, POSIX::WNOHANG()) == $pid;
        sleep 0.05;
    }
    if (kill 0, $pid) {
        kill 'KILL', $pid;
        waitpid $pid, 0;
    }
}

sub DESTROY { $_[0]->stop }

sub connect_to {
    my ($self) = @_;
    return IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $self->{port},
                                 Timeout => 2);
}

# ---------------------------------------------------------------------
package AOAICache::Redis;
our @ISA = ('AOAICache');

sub command {
    my ($self) = @_;
    return ('redis-server', '--port', $self->{port}, '--bind', '127.0.0.1',
            '--save', '', '--appendonly', 'no', '--dir', $self->{dir});
}

sub spec { 'redis:127.0.0.1:' . $_[0]{port} }

sub ready { ($_[0]->cli('PING') // '') eq 'PONG' }

sub cli {
    my ($self, @args) = @_;
    my $quoted = join ' ', map { "'" . s/'/'\\''/gr . "'" } @args;
    my $out = `redis-cli -h 127.0.0.1 -p $self->{port} $quoted 2>/dev/null`;
    chomp $out if defined $out;
    return $out;
}

sub get { $_[0]->cli('GET', $_[1]) }
sub set { my ($self, $key, $value, $ttl) = @_; $self->cli('SET', $key, $value, 'EX', $ttl || 60) }

# ---------------------------------------------------------------------
package AOAICache::Memcached;
our @ISA = ('AOAICache');

sub command {
    my ($self) = @_;
    return ('memcached', '-l', '127.0.0.1', '-p', $self->{port}, '-U', '0', '-m', '16',
            ($> == 0 ? ('-u', 'nobody') : ()));
}

sub spec { 'memcache:127.0.0.1:' . $_[0]{port} }

sub talk {
    my ($self, $request, $until) = @_;
    my $sock = $self->connect_to or return undef;
    print {$sock} $request;
    my $answer = '';
    while (defined(my $line = <$sock>)) {
        $answer .= $line;
        last if $line =~ $until;
    }
    close $sock;
    return $answer;
}

sub ready { defined($_[0]->talk("version\r\n", qr/^VERSION/)) }

sub get {
    my ($self, $key) = @_;
    my $answer = $self->talk("get $key\r\n", qr/^(END|ERROR)/) // return undef;
    return $answer =~ /^VALUE \S+ \d+ \d+\r\n(.*?)\r\n/s ? $1 : undef;
}

sub set {
    my ($self, $key, $value, $ttl) = @_;
    my $answer = $self->talk(sprintf("set %s 0 %d %d\r\n%s\r\n", $key, $ttl || 60,
                                     length $value, $value), qr/^(STORED|ERROR|CLIENT_ERROR|SERVER_ERROR)/);
    return ($answer // '') =~ /^STORED/;
}

# ---------------------------------------------------------------------
package AOAICache::Blackhole;
our @ISA = ('AOAICache');

# Accepts connections and reads from them, never answering, for 120 s.
sub command {
    my ($self) = @_;
    my $code = 'use IO::Socket::INET; use IO::Select;'
        . 'my $l = IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => '
        . $self->{port} . ', Listen => 64, ReuseAddr => 1) or die $!;'
        . 'my $s = IO::Select->new($l); my $end = time + 120;'
        . 'while (time < $end) { for my $h ($s->can_read(1)) {'
        . ' if ($h == $l) { $s->add($l->accept) } else { sysread($h, my $b, 4096) or $s->remove($h) } } }';
    return ('perl', '-e', $code);
}

sub ready { defined $_[0]->connect_to }

sub spec_redis { 'redis:127.0.0.1:' . $_[0]{port} }

# ---------------------------------------------------------------------
package AOAICache;

sub start_redis     { AOAICache::Redis->new_server(name => 'redis') }
sub start_memcached { AOAICache::Memcached->new_server(name => 'memcached') }
sub start_blackhole { AOAICache::Blackhole->new_server(name => 'blackhole') }

1;
