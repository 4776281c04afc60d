# Issue 6: every parser that sees outside bytes has a libFuzzer target
# (fuzz/); CI runs each briefly, so a crash that a few seconds can find
# fails the build.  Inputs that crashed once are in fuzz/seeds/ and are
# replayed first; the exact cases are also assertions in
# t/10_ratelimit_headers.t.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use AOAITest;

plan skip_all => 'the fuzzers run once, in the release pass' if $ENV{AOAI_SANITIZE};
plan skip_all => 'clang with libFuzzer is needed (t/run installs it)'
    unless `which clang` && -d '/usr/lib/llvm-14/lib/clang';

my $out = `timeout 300 $TOP/fuzz/run 10 2>&1`;
is($?, 0, 'fuzz/run 10: no crash') or diag $out;
for my $target (qw(ratelimit keyfile usage)) {
    my ($runs) = $out =~ /== $target:.*?stat::number_of_executed_units: (\d+)/s;
    ok($runs && $runs > 1000, "$target fuzzed (" . ($runs // 0) . ' inputs)');
}
done_testing();
