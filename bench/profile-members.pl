#!/usr/bin/perl
# Instructions per request (valgrind --tool=callgrind, which counts rather
# than times, so the figure repeats run to run) through one httpd process
# (-X), for lbmethod=aoai and lbmethod=byrequests over 2 and 64 healthy
# members.  Answers "what does a member cost" where wall-clock throughput on
# a shared 2-core machine is too noisy to see it.
#   perl bench/profile-members.pl [requests measured, default 50]
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../t/lib";
use AOAITest;
use File::Temp qw(tempdir);
use Time::HiRes qw(sleep);

my $requests = shift || 50;
my @members = map { "h$_" } 0 .. 63;
my $mock = start_mock(name => 'profile-mock', members => [ map { { name => $_ } } @members ]);
my %url = map { $_ => $mock->member_url($_) } @members;

my $dir = tempdir('aoai-profile-XXXXXX', TMPDIR => 1, CLEANUP => 1);
chmod 0777, $dir;
my $port = free_port();
my $conf = AOAITest::base_conf($dir, ports => [$port], mpm => 'prefork', loglevel => 'warn',
    modules => AOAITest::load_modules(qw(authz_core proxy proxy_http proxy_balancer slotmem_shm
                                         lbmethod_byrequests))
             . "LoadModule aoai_balancer_module $TOP/.libs/mod_aoai_balancer.so\n");
for my $case ([ 'aoai', 2 ], [ 'aoai', 64 ], [ 'byrequests', 2 ], [ 'byrequests', 64 ]) {
    my ($lbmethod, $n) = @$case;
    $conf .= "<Proxy balancer://$lbmethod$n>\n"
           . join('', map { "    BalancerMember $url{$members[$_]} lbset=0\n" } 0 .. $n - 1)
           . "    ProxySet lbmethod=$lbmethod\n</Proxy>\nProxyPass /$lbmethod$n/openai balancer://$lbmethod$n/openai\n";
}
open my $fh, '>', "$dir/httpd.conf" or die;
print $fh $conf;
close $fh;

# One valgrind run per balancer and size; what 200 more requests cost is
# the difference, so start-up and shutdown cancel out.
sub total_instructions {
    my ($path, $count) = @_;
    my $out = "$dir/callgrind.$path.$count";
    my $pid = fork // die;
    if (!$pid) {
        open STDERR, '>', '/dev/null';
        # as root httpd would switch to its User after valgrind opened the
        # output file as root: run both as nobody from the start
        exec(($> == 0 ? ('runuser', '-u', 'nobody', '--') : ()),
             'valgrind', '--tool=callgrind', '--vgdb=no', "--callgrind-out-file=$out",
             '/usr/sbin/apache2', '-X', '-d', $dir, '-f', "$dir/httpd.conf");
    }
    wait_until('httpd under valgrind', 120, sub {
        IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Timeout => 1) });
    my $server = bless { ports => [$port] }, 'AOAITest::Server';
    chat($server, path => "/$path$CHAT_PATH", timeout => 60) for 1 .. $count;
    # httpd itself, not runuser, which does not pass signals on
    open my $pidfile, '<', "$dir/httpd.pid" or die "no pid file: $!";
    chomp(my $httpd = <$pidfile>);
    kill 'TERM', $httpd;
    waitpid $pid, 0;
    my ($total) = `callgrind_annotate $out 2>/dev/null` =~ /^\s*([\d,]+)\s+\(100\.0%\)\s+PROGRAM TOTALS/m;
    die "no callgrind total for $path x $count\n" unless $total;
    $total =~ tr/,//d;
    return $total;
}
my %ir;
for my $path (qw(aoai2 aoai64 byrequests2 byrequests64)) {
    $ir{$path} = (total_instructions($path, $requests + 20) - total_instructions($path, 20)) / $requests;
}
$mock->stop;

printf "| balancer | instructions per request |\n| --- | --- |\n";
printf "| %s | %.0f |\n", $_, $ir{$_} for qw(byrequests2 byrequests64 aoai2 aoai64);
printf "\n64 members cost aoai %+.0f instructions per request (%+.1f%%), byrequests %+.0f (%+.1f%%); "
     . "aoai over byrequests: %+.1f%% at 2 members, %+.1f%% at 64\n",
    $ir{aoai64} - $ir{aoai2}, 100 * ($ir{aoai64} - $ir{aoai2}) / $ir{aoai2},
    $ir{byrequests64} - $ir{byrequests2}, 100 * ($ir{byrequests64} - $ir{byrequests2}) / $ir{byrequests2},
    100 * ($ir{aoai2} - $ir{byrequests2}) / $ir{byrequests2},
    100 * ($ir{aoai64} - $ir{byrequests64}) / $ir{byrequests64};
