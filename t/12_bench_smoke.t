# The benchmark command runs, end to end, in its short form, so it cannot
# rot.  Nothing here asserts a timing: only that every figure is produced,
# that no call of the overhead loads failed, that the throttle scenario
# through the module loses no call, and that the fixed-answer failover
# rows measure calls that really failed over.
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

# bench/fixed-answer.pl: the gateway's own cost in front of nginx.
SKIP: {
    skip 'valgrind is needed for the instruction counts', 1 unless `which valgrind`;
    my $fixed = `BENCH_SHORT=1 timeout 900 perl $TOP/bench/fixed-answer.pl 2>&1`;
    is($?, 0, 'bench/fixed-answer.pl in its short form exits 0') or diag $fixed;
    for my $figure ('2 members: throughput', '2 members: p50', '2 members: p99',
                    '64 members: throughput', '64 members: p50', '64 members: p99',
                    '2 HTTPS members: throughput', '429 failover, 32 connections: added p50',
                    '429 failover, 1 connection: added p50', 'instructions per call, 2 members',
                    'instructions per call, 64 members') {
        like($fixed, qr/^\| \Q$figure\E \| .+ \| (?:met|\*\*not met\*\*) \|$/m,
             "the fixed-answer table has: $figure, with its verdict");
    }
    # (socket errors are left out: now and then wrk sees a kept-alive
    # connection closed, on stock byrequests as well)
    my ($non2xx, $logged) = $fixed =~ /Non-2xx answers in the loads: (.*?)\. Socket errors wrk saw: .*?\. Error_log lines at level error or worse: (.*)\.$/m;
    my @loads = split /; /, $non2xx // '';
    is(scalar @loads, 13, 'every fixed-answer load reports its non-2xx answers');
    is_deeply([ grep { !/: 0$/ } @loads ], [], 'no call of the fixed-answer loads failed');
    is($logged, 'none', 'no fixed-answer gateway logged an error');
    # Under load a few calls may find the first member inside its 0 ms
    # window (its end was written at a later microsecond than the pick read
    # the clock); one call at a time, none can.
    for my $row ([ '32 connections', 0.99 ], [ '1 connection', 1 ]) {
        my ($name, $share) = @$row;
        my ($failed_over, $calls) = $fixed =~ /^\| 429 failover, \Q$name\E: .*?: (\d+) of (\d+) calls failed over/m;
        ok($calls && $failed_over >= $share * $calls,
           "429 failover, $name: at least $share of the calls met the 429 and failed over ("
           . ($failed_over // '?') . ' of ' . ($calls // '?') . ')');
    }
    my ($aoai, $byreq) = $fixed =~ /^\| instructions per call, 2 members \| aoai (\d+); byrequests (\d+):/m;
    ok($aoai && $byreq && $aoai > $byreq,
       'callgrind counted both sides, and aoai does more per call than stock byrequests');
    like($fixed, qr/^\| aoai_proxy_handler \| \d+ \| \d+ \| \d+ \| \d+ \|$/m,
         'the per-function table has the module\'s handler');
}

done_testing();
