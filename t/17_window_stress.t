# Issue 6, concurrency of shared state: modules/aoai_window.c raised from
# 4 processes x 4 threads at once (t/unit/window_stress.c): the later end
# always wins, and no read is torn.
use strict;
use warnings;
use FindBin;

my $root = "$FindBin::Bin/..";
my $bin = "$root/t/unit/window_stress.bin";
my @sanitize = $ENV{AOAI_SANITIZE}
    ? ('-fsanitize=address,undefined', '-fno-sanitize-recover=undefined', '-g') : ();
my @cmd = ('gcc', '-O2', '-Wall', '-Wextra', '-Werror', @sanitize, "-I$root/modules",
           '-I/usr/include/apache2', '-I/usr/include/apr-1.0', '-DLINUX', '-D_REENTRANT',
           '-D_GNU_SOURCE', "$root/t/unit/window_stress.c", "$root/modules/aoai_window.c",
           '-lapr-1', '-lpthread', '-o', $bin);
if (system(@cmd) != 0) {
    print "1..1\nnot ok 1 - compile t/unit/window_stress.c\n";
    exit 1;
}
exec $bin or die "exec $bin: $!";
