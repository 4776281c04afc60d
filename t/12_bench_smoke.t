# The benchmark command runs, end to end, in its short form, so it cannot
# rot.  Nothing here asserts a timing: only that every figure is produced,
# that no call of the overhead loads failed, and that the throttle scenario
# through the module loses no call.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use AOAITest;

plan skip_all => 'the benchmark runs once, with the release build'
    if $ENV{AOAI_SANITIZE};
plan skip_all => 'wrk and nginx are needed (t/run installs them)'
    unless `which wrk` && `which nginx`;

my $out = `timeout 600 perl $TOP/bench/bench.pl --smoke 2>&1`;
is($?, 0, 'bench/bench.pl --smoke exits 0') or diag $out;
for my $figure ('1. Overhead', '1b. Overhead, 2 HTTPS members', '2. Scale in members',
                '3. Failover cost', '4. Throttle scenario (aoai)',
                '4. Throttle scenario (aoai, headroom off)', '4. Throttle scenario (nginx)', '5. Memory', '6. nginx',
                '7. First-byte timeout', '8. Two gateways (one Redis)',
                '8. Two gateways (no cache)', '8. Shared cache overhead') {
    like($out, qr/^\| \Q$figure\E/m, "the table has: $figure");
}
like($out, qr/non-2xx in the overhead runs: aoai: 0, byreq: 0, direct: 0, nginx: 0\./,
     'no call of the overhead loads failed');
like($out, qr/^\| 4\. Throttle scenario \(aoai\) .*client success \*\*1\.000\*\*/m,
     'the throttle scenario through the module loses no call');
like($out, qr/^\| 4\. Throttle scenario \(aoai, headroom off\) .*client success \*\*1\.000\*\*/m,
     'nor with headroom routing off');
like($out, qr/^\| 8\. Two gateways \(one Redis\) .*client success \*\*1\.000\*\*/m,
     'the scenario through two gateways sharing a Redis loses no call');
like($out, qr/\d+ bytes of shared memory per member/, 'the shared memory per member is reported');
like($out, qr/^\| 7\. First-byte timeout .*: (\d+) served by the next member/m,
     'the first-byte timeout figure was measured');
my ($calls, $served) = $out =~ /(\d+) streamed calls: (\d+) served by the next member/;
is($served, $calls, 'every first-byte call was served by the next member');

done_testing();
