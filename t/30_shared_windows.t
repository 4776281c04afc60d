# Issue 19, point 6: two gateways sharing one Redis, headroom off.  Each
# member window costs one 429 in all, not one per gateway: a gateway whose
# member is near the end of what it has left reads the member's key in
# the cache before it sends (aoai_shared_cache_window), instead of waiting
# for its next sync (250 ms here) to learn of the other gateway's 429.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use AOAITest;
use POSIX ();
use File::Temp qw(tempdir);
use Time::HiRes qw(time sleep);

plan skip_all => 'redis-server is needed (t/run installs it)' unless `which redis-server`;

my $mock = start_mock(members => [ { name => 'p', quota => '4 1000' }, { name => 's' } ]);
my $redis = start_redis();

sub gateway {
    my ($name) = @_;
    return start_gateway(name => $name,
        extra_modules => AOAITest::load_modules('socache_redis'),
        conf => "AOAISharedCache " . $redis->spec . "\nAOAISharedCacheSync 250ms\n"
          . balancer_conf('aoai', members => [
                [ $mock->member_url('p'), lbset => 0, route => 'p' ],
                [ $mock->member_url('s'), lbset => 1, route => 's' ] ],
                inside => [ 'AOAIHeadroomFloor requests off', 'AOAIHeadroomFloor tokens off' ])
          . "ProxyPass /openai balancer://aoai/openai\n");
}

my @gw = (gateway('gwA'), gateway('gwB'));
my $dir = tempdir(CLEANUP => 1);
my $seconds = 6;
my $t0 = time;
my @pids;
for my $i (0 .. 1) {
    my $pid = fork // die;
    if (!$pid) {
        open my $out, '>', "$dir/$i" or POSIX::_exit(1);
        while (time - $t0 < $seconds) {
            my $res = chat($gw[$i]);
            print $out "$res->{status}\n";
            sleep 0.02 + rand(0.04);
        }
        close $out;
        POSIX::_exit(0);
    }
    push @pids, $pid;
}
waitpid $_, 0 for @pids;
my @status = map { open my $in, '<', "$dir/$_" or die; map { chomp; $_ } <$in> } 0 .. 1;
my $windows = $seconds + 1;
my $n429 = $mock->stats('p')->{status}{429} // 0;
my $served = $mock->stats('p')->{status}{200} // 0;
is(scalar(grep { $_ != 200 } @status), 0, 'every call of both gateways was served (' . scalar(@status) . ')');
ok($n429 <= $windows, "the member answered $n429 429s in at most $windows windows: one per window, not one per gateway");
ok($served >= 4 * ($seconds - 1), "  and served $served calls, its quota in every window");
$_->stop for @gw;
$redis->stop;
$mock->stop;
done_testing();
