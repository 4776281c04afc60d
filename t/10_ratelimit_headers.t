# Unit test of modules/aoai_ratelimit_headers.c, the parser of what a
# member's 429 says about its window (retry-after-ms, Retry-After seconds or
# HTTP-date, x-ratelimit-reset-*).  Builds t/unit/ratelimit_headers_test.c
# against the parser alone (APR only, no httpd), with ASan+UBSan when
# AOAI_SANITIZE is set, and hands over to it: the program prints the TAP.
# A build failure is a test failure, never a skip.
use strict;
use warnings;
use FindBin;
use Cwd qw(abs_path);

my $root = abs_path("$FindBin::Bin/..");
my $bin = "$root/t/unit/ratelimit_headers_test.bin";

my @cmd = (
    'gcc', '-Wall', '-Wextra', '-Werror',
    ($ENV{AOAI_SANITIZE}
        ? ('-fsanitize=address,undefined', '-fno-sanitize-recover=undefined',
           '-fno-omit-frame-pointer', '-g')
        : ()),
    "-I$root/modules", '-I/usr/include/apache2', '-I/usr/include/apr-1.0',
    '-DLINUX', '-D_REENTRANT', '-D_GNU_SOURCE',
    "$root/t/unit/ratelimit_headers_test.c",
    "$root/modules/aoai_ratelimit_headers.c",
    '-lapr-1', '-laprutil-1',
    '-o', $bin,
);

unlink $bin;
if (system(@cmd) != 0) {
    print "1..1\nnot ok 1 - compile\n# failed: @cmd\n";
    exit 1;
}
$| = 1;
exec $bin or do {
    print "1..1\nnot ok 1 - run $bin: $!\n";
    exit 1;
};
