#!/usr/bin/perl
# What reading an answer's tokens costs (issue 23), the reader alone: the
# answer's bytes fed to modules/aoai_usage.c as the output filter feeds
# them (a stream one chunk at a time), with nothing else around it.
#
# Cases, each an answer as Azure OpenAI words it:
#   json          a 740-byte chat.completion (bench/fixed-answer.pl's)
#   stream        500 chat.completion.chunk events, no usage: the
#                 completion counted from the deltas
#   stream-usage  the same with include_usage ("usage": null on every
#                 chunk, then the usage chunk)
#   stream-gzip   the stream without usage, gzip-compressed: inflated
#                 (modules/aoai_inflate.c) and read
# and, for json and stream-usage, the reader before issue 23 (jansson on a
# kept copy; commit 4f3fb69), for comparison: it did not count a stream
# without usage nor read gzip.
#
# Instructions: callgrind over a run of 1 and of 11 answers, the
# difference divided by 10 (start-up cancels out).  Wall clock: the median
# of 5 runs of N answers, per answer and per chunk.
#   perl bench/usage.pl [N, default 2000]
# Needs gcc, valgrind, APR and zlib headers; builds into a temporary
# directory.
use strict;
use warnings;
use FindBin;
use File::Temp qw(tempdir);

my $n = shift || 2000;
my $top = "$FindBin::Bin/..";
my $before_commit = '4f3fb69';
my $dir = tempdir('aoai-bench-usage-XXXXXX', TMPDIR => 1, CLEANUP => 1);
my $apr = `apr-1-config --includes --cflags --link-ld`;
$apr =~ s/\s+/ /g;

open my $fh, '>', "$dir/driver.c" or die;
print $fh <<'EOF';
#include "aoai_usage.h"
#ifndef BEFORE
#include "aoai_inflate.h"
#include <zlib.h>
#endif
#include "apr_general.h"
#include "apr_strings.h"
#include "apr_time.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHUNKS 500

static const char answer[] =
    "{\"id\":\"chatcmpl-AbCdEf0123456789bench0000000\",\"object\":\"chat.completion\","
    "\"created\":1732500000,\"model\":\"gpt-35-turbo\",\"system_fingerprint\":\"fp_e49e4201a9\","
    "\"choices\":[{\"index\":0,\"finish_reason\":\"stop\",\"logprobs\":null,"
    "\"message\":{\"role\":\"assistant\",\"content\":\"The United States grew from thirteen "
    "British colonies, declared independence in 1776 and wrote its Constitution in 1787.\"},"
    "\"content_filter_results\":{\"hate\":{\"filtered\":false,\"severity\":\"safe\"},"
    "\"self_harm\":{\"filtered\":false,\"severity\":\"safe\"},\"sexual\":{\"filtered\":false,"
    "\"severity\":\"safe\"},\"violence\":{\"filtered\":false,\"severity\":\"safe\"}}}],"
    "\"prompt_filter_results\":[{\"prompt_index\":0,\"content_filter_results\":{}}],"
    "\"usage\":{\"prompt_tokens\":212,\"completion_tokens\":16,\"total_tokens\":228}}";

static void feed(void *scan, const char *data, apr_size_t length)
{
    aoai_usage_scan_feed(NULL, scan, data, length);
}

int main(int argc, char **argv)
{
    const char *mode = argv[1];
    int iterations = atoi(argv[2]), i, j, pieces = 0, usage = 0, gz = 0;
    char *piece[CHUNKS + 2];
    apr_size_t length[CHUNKS + 2];
    apr_pool_t *pool;
    apr_int64_t figure = 0;
    apr_time_t start;

    (void)argc;
    apr_initialize();
    apr_pool_create(&pool, NULL);
    usage = !strcmp(mode, "stream-usage");
    gz = !strcmp(mode, "stream-gzip");
    if (!strcmp(mode, "json")) {
        piece[pieces++] = (char *)answer;
    }
    else {
        for (i = 0; i < CHUNKS; i++) {
            piece[pieces++] = apr_psprintf(pool,
                "data: {\"choices\":[{\"content_filter_results\":{\"hate\":{\"filtered\":false,"
                "\"severity\":\"safe\"},\"self_harm\":{\"filtered\":false,\"severity\":\"safe\"}},"
                "\"delta\":{\"content\":\" word%d\"},\"finish_reason\":null,\"index\":0,"
                "\"logprobs\":null}],\"created\":1732500000,\"id\":"
                "\"chatcmpl-AbCdEf0123456789bench0000000\",\"model\":\"gpt-4o-2024-08-06\","
                "\"object\":\"chat.completion.chunk\",\"system_fingerprint\":\"fp_e49e4201a9\"%s}\n\n",
                i % 10, usage ? ",\"usage\":null" : "");
        }
        if (usage) {
            piece[pieces++] = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":212,"
                              "\"completion_tokens\":500,\"total_tokens\":712}}\n\n";
        }
        piece[pieces++] = "data: [DONE]\n\n";
    }
    for (i = 0; i < pieces; i++) {
        length[i] = strlen(piece[i]);
    }
#ifndef BEFORE
    if (gz) {
        /* each chunk compressed and flushed as it would be sent */
        z_stream zs;
        memset(&zs, 0, sizeof(zs));
        deflateInit2(&zs, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);
        for (i = 0; i < pieces; i++) {
            unsigned char *out = apr_palloc(pool, length[i] + 64);
            zs.next_in = (unsigned char *)piece[i];
            zs.avail_in = (uInt)length[i];
            zs.next_out = out;
            zs.avail_out = (uInt)length[i] + 64;
            deflate(&zs, i + 1 == pieces ? Z_FINISH : Z_SYNC_FLUSH);
            length[i] = length[i] + 64 - zs.avail_out;
            piece[i] = (char *)out;
        }
        deflateEnd(&zs);
    }
#endif
    start = apr_time_now();
    for (j = 0; j < iterations; j++) {
        apr_pool_t *p;
        aoai_usage_scan *scan;
        apr_pool_create(&p, pool);
        scan = aoai_usage_scan_start(p, strcmp(mode, "json") != 0);
#ifndef BEFORE
        if (gz) {
            aoai_inflate *z = aoai_inflate_start(p, "gzip", feed, scan);
            for (i = 0; i < pieces; i++) {
                aoai_inflate_feed(z, piece[i], length[i]);
            }
        }
        else
#endif
        for (i = 0; i < pieces; i++) {
            aoai_usage_scan_feed(p, scan, piece[i], length[i]);
        }
        aoai_usage_scan_finish(scan);
#ifndef BEFORE
        figure += scan->found ? scan->usage.total_tokens : scan->counted;
#else
        figure += scan->found ? scan->usage.total_tokens : 0;
#endif
        apr_pool_destroy(p);
    }
    printf("%.3f %d %" APR_INT64_T_FMT "\n",
           (double)(apr_time_now() - start) / iterations, pieces,
           figure / iterations);
    return 0;
}
EOF
close $fh;

# The reader before issue 23, from git.
mkdir "$dir/src-before";
for my $file (qw(aoai_usage.c aoai_usage.h aoai_json.c aoai_json.h)) {
    system("git -C $top show $before_commit:modules/$file > $dir/src-before/$file") == 0
        or die "git show $before_commit:modules/$file failed\n";
}
sub build {
    my ($out, @args) = @_;
    my $cmd = "gcc -O2 -g -o $dir/$out @args $apr 2>&1";
    my $err = `$cmd`;
    die "$cmd\n$err" if $?;
}
build('now', "-I$top/modules", "$dir/driver.c", "$top/modules/aoai_usage.c",
      "$top/modules/aoai_inflate.c", '-lz');
build('before', '-DBEFORE', "-D_GNU_SOURCE", "-I$dir/src-before", "$dir/driver.c", "$dir/src-before/aoai_usage.c",
      "$dir/src-before/aoai_json.c", "-ljansson");

sub instructions {
    my ($binary, $mode, $iterations) = @_;
    my $out = "$dir/cg.$binary.$mode.$iterations";
    system("valgrind --tool=callgrind --callgrind-out-file=$out $dir/$binary $mode $iterations "
           . ">/dev/null 2>&1") == 0 or die "valgrind $binary $mode failed\n";
    open my $cg, '<', $out or die;
    while (<$cg>) {
        return $1 if /^(?:summary|totals): (\d+)/;
    }
    die "no total in $out\n";
}

sub wall {
    my ($binary, $mode) = @_;
    my @runs = sort { $a->[0] <=> $b->[0] }
               map { [ split ' ', `$dir/$binary $mode $n` ] } 1 .. 5;
    return @{ $runs[2] };
}

my @rows;
for my $case ([ now => 'json' ], [ before => 'json' ], [ now => 'stream' ],
              [ now => 'stream-usage' ], [ before => 'stream-usage' ],
              [ now => 'stream-gzip' ]) {
    my ($binary, $mode) = @$case;
    my $per_answer = (instructions($binary, $mode, 11) - instructions($binary, $mode, 1)) / 10;
    my ($us, $pieces, $figure) = wall($binary, $mode);
    push @rows, sprintf "| %s | %s | %d | %.0f | %.0f | %.2f | %.3f | %s |",
        $mode, $binary eq 'now' ? 'issue 23' : "before ($before_commit)", $pieces,
        $per_answer, $per_answer / $pieces, $us, $us / $pieces,
        $figure ? $figure : 'none';
}
my $cpu = (grep { /model name/ } `cat /proc/cpuinfo`)[0] // '';
$cpu =~ s/.*:\s*//;
chomp $cpu;
print "Measured ", scalar(gmtime), " UTC on $cpu; wall clock the median of 5 runs of $n answers.\n\n";
print "| answer | reader | pieces | instructions per answer | per piece | us per answer | us per piece | figure read |\n";
print "| --- | --- | --- | --- | --- | --- | --- | --- |\n";
print "$_\n" for @rows;
