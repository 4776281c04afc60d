package AOAIUnit;

# Builds a C unit test (t/unit/*.c) against the module sources it tests,
# APR and whatever libraries it names, with ASan+UBSan when AOAI_SANITIZE
# is set, and hands the process over to it: the program prints the TAP.
# httpd's include path is not given: the files under test are the APR-only
# layer, and a build that needs httpd's headers fails here.
# A build failure is a test failure, never a skip.

use strict;
use warnings;
use Exporter 'import';
use Cwd qw(abs_path);
use File::Basename qw(dirname);

our @EXPORT = qw(run_unit_test);

sub run_unit_test {
    my (%o) = @_;
    my $root = abs_path(dirname(__FILE__) . '/../..');
    my $bin = "$root/t/unit/$o{name}.bin";
    my @cmd = (
        'gcc', '-Wall', '-Wextra', '-Werror', @{ $o{cflags} || [] },
        ($ENV{AOAI_SANITIZE}
            ? ('-fsanitize=address,undefined', '-fno-sanitize-recover=undefined',
               '-fno-omit-frame-pointer', '-g')
            : ()),
        "-I$root/modules", '-I/usr/include/apr-1.0',
        '-DLINUX', '-D_REENTRANT', '-D_GNU_SOURCE',
        "$root/t/unit/$o{name}.c", map({ "$root/$_" } @{ $o{sources} }),
        '-lapr-1', @{ $o{libs} || [] },
        '-o', $bin,
    );
    unlink $bin;
    if (system(@cmd) != 0) {
        print "1..1\nnot ok 1 - compile t/unit/$o{name}.c\n# failed: @cmd\n";
        exit 1;
    }
    $| = 1;
    exec $bin or do {
        print "1..1\nnot ok 1 - run $bin: $!\n";
        exit 1;
    };
}

1;
