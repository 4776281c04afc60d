# Issue 17: the module's structure stays what mod_aoai_balancer.c says it
# is.
#   - every file of modules/ is in one of the layers that the comment at
#     the top of mod_aoai_balancer.c names, has a header of its own and
#     includes it first;
#   - includes point down only: a file includes nothing of a higher layer,
#     and there is no include cycle;
#   - calls point down only: no call cycle between files, read from the
#     symbols each compiled object defines and uses (nm);
#   - a function's prefix tells its file: every global symbol of
#     aoai_X.o starts with aoai_X;
#   - the APR-only layer includes no httpd header, and it and its fuzzers
#     and unit tests build without httpd's include path;
#   - each AOAI_LOGNO number is used at one place, and no httpd APLOGNO is;
#   - no function is longer than 80 lines unless the comment above it
#     says why;
#   - directives are refused outside the contexts docs/directives.md
#     gives them, naming where they belong.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use AOAITest;

my $glue = "$TOP/mod_aoai_balancer.c";
sub slurp { open my $fh, '<', $_[0] or die "$_[0]: $!"; local $/; <$fh> }

# --- The layers, as the glue's comment names them ------------------------
my ($block) = slurp($glue) =~ m{from the bottom.*?\n \*\n((?: \* {3}\S[^\n]*\n| \* {10,}\S[^\n]*\n)+)}s;
ok($block, 'mod_aoai_balancer.c names the layers') or BAIL_OUT('no layer list');
my (@layers, %layer_of);
for my $line (split /\n/, $block) {
    $line =~ s/^\s\*\s+//;
    if ($line =~ /^(\S+(?: \S+)?)\s{2,}(.*)$/) {
        push @layers, $1;
        $line = $2;
    }
    $layer_of{$_} = $#layers for grep { /^aoai_/ } split /[\s,]+/, $line;
}
ok(@layers >= 4, 'layers: ' . join(' < ', @layers));

my @units = sort map { m{modules/(aoai_\w+)\.c$} ? $1 : () } glob "$TOP/modules/*.c";
my %unit = map { $_ => 1 } @units;
is_deeply([ grep { !defined $layer_of{$_} } @units ], [], 'every file of modules/ is in a layer');
is_deeply([ grep { !$unit{$_} } sort keys %layer_of ], [], 'every file the layers name exists');
for my $u (@units) {
    ok(-f "$TOP/modules/$u.h", "$u has a header of its own");
    my ($first) = slurp("$TOP/modules/$u.c") =~ /^#include "([^"]+)"/m;
    is($first, "$u.h", "  $u.c includes it first");
}

# --- Includes point down ---------------------------------------------------
my %includes;
for my $u (@units) {
    for my $file ("$TOP/modules/$u.c", "$TOP/modules/$u.h") {
        next unless -f $file;
        for my $inc (slurp($file) =~ /^#include\s+"(aoai_\w+)\.h"/mg) {
            $includes{$u}{$inc} = 1 if $inc ne $u;
        }
    }
}
my @upward;
for my $u (@units) {
    for my $inc (sort keys %{ $includes{$u} || {} }) {
        push @upward, "$u includes $inc" if ($layer_of{$inc} // 99) > $layer_of{$u};
    }
}
is_deeply(\@upward, [], 'no file includes one of a higher layer');

sub find_cycle {
    my ($edges) = @_;
    my (%state, @path, $cycle);
    my $visit;
    $visit = sub {
        my ($n) = @_;
        return if $cycle || ($state{$n} // 0) == 2;
        if (($state{$n} // 0) == 1) {
            my @loop = @path;
            shift @loop while @loop && $loop[0] ne $n;
            $cycle = join ' -> ', @loop, $n;
            return;
        }
        $state{$n} = 1;
        push @path, $n;
        $visit->($_) for sort keys %{ $edges->{$n} || {} };
        pop @path;
        $state{$n} = 2;
    };
    $visit->($_) for sort keys %$edges;
    return $cycle;
}
is(find_cycle(\%includes), undef, 'no include cycle among modules/');

# --- Calls point down (from the objects' symbols) --------------------------
my $objdir = "$TOP/modules/.libs";
SKIP: {
    skip 'the release build is needed (make -f apxs.mk)', 3
        unless -f "$objdir/aoai_failover.o";
    my (%defines, %uses);
    for my $u (@units) {
        for (`nm $objdir/$u.o`) {
            if (/^\S+\s+[TDBRC]\s+(\S+)$/) { $defines{$1} = $u }
            elsif (/^\s+U\s+(\S+)$/) { $uses{$u}{$1} = 1 }
        }
    }
    my (%calls, @bad_prefix);
    for my $u (@units) {
        for my $sym (keys %{ $uses{$u} || {} }) {
            my $owner = $defines{$sym};
            $calls{$u}{$owner} = 1 if $owner && $owner ne $u;
        }
    }
    for my $sym (sort keys %defines) {
        my $u = $defines{$sym};
        push @bad_prefix, "$sym in $u.o" unless $sym eq $u || index($sym, "${u}_") == 0;
    }
    is(find_cycle(\%calls), undef, 'no call cycle among modules/');
    my @up;
    for my $u (@units) {
        push @up, map { "$u calls $_" } grep { $layer_of{$_} > $layer_of{$u} } sort keys %{ $calls{$u} || {} };
    }
    is_deeply(\@up, [], 'no file calls into a higher layer');
    is_deeply(\@bad_prefix, [], "every global symbol of aoai_X.o starts with aoai_X");
}

# --- The APR-only layer -----------------------------------------------------
my @apr_only = grep { $layer_of{$_} == 0 } @units;
ok(@apr_only >= 4, 'the bottom layer: ' . join(', ', @apr_only));
my $httpd_header = qr/^#include\s+[<"](?:httpd|http_\w+|ap_\w+|util_\w+|mod_\w+|unixd|scoreboard)\.h[">]/m;
for my $u (@apr_only) {
    for my $file (grep { -f } "$TOP/modules/$u.c", "$TOP/modules/$u.h") {
        unlike(slurp($file), $httpd_header, "$u: " . ($file =~ /\.h$/ ? 'header' : 'source') . ' includes no httpd header');
    }
    my $out = `gcc -Wall -Wextra -Werror -D_GNU_SOURCE -fsyntax-only -I/usr/include/apr-1.0 -I$TOP/modules $TOP/modules/$u.c 2>&1`;
    is($?, 0, "$u.c builds without httpd's include path") or diag $out;
}
for my $c (glob("$TOP/fuzz/*.c"), glob("$TOP/t/unit/*.c")) {
    (my $name = $c) =~ s{^\Q$TOP\E/}{};
    my $out = `gcc -Wall -Wextra -D_GNU_SOURCE -fsyntax-only -I/usr/include/apr-1.0 -I$TOP/modules $c 2>&1`;
    is($?, 0, "$name builds without httpd's include path") or diag $out;
}

# --- Log numbers ----------------------------------------------------------------
my (%used_at, @aplogno);
for my $file (glob("$TOP/modules/*.c"), $glue) {
    my $text = slurp($file);
    (my $name = $file) =~ s{^\Q$TOP\E/}{};
    push @{ $used_at{$1} }, $name while $text =~ /AOAI_LOGNO\((\d+)\)/g;
    push @aplogno, $name if $text =~ /\bAPLOGNO\(/;
}
ok(keys %used_at >= 30, scalar(keys %used_at) . ' message numbers in use');
is_deeply([ map { "AOAI$_ at " . join(', ', @{ $used_at{$_} }) } grep { @{ $used_at{$_} } > 1 } sort keys %used_at ],
          [], 'each AOAI_LOGNO number is used at one place');
is_deeply(\@aplogno, [], "no httpd APLOGNO (httpd's registry is httpd's)");

# --- Function length -------------------------------------------------------------
my @long;
for my $file (glob("$TOP/modules/*.c"), $glue) {
    my @lines = split /\n/, slurp($file);
    for my $i (0 .. $#lines) {
        next unless $lines[$i] eq '{' && $i > 0 && $lines[$i - 1] =~ /\)\s*$/;
        my $start = $i - 1;
        $start-- while $start > 0 && $lines[$start] =~ /^\s/;
        my $end = $i;
        $end++ while $end <= $#lines && $lines[$end] ne '}';
        my $length = $end - $start + 1;
        next if $length <= 80;
        my $above = join "\n", @lines[($start > 6 ? $start - 6 : 0) .. $start - 1];
        next if $above =~ /longer than 80 lines/i;
        (my $name = $file) =~ s{^\Q$TOP\E/}{};
        push @long, "$name: $lines[$start] ($length lines)";
    }
}
is_deeply(\@long, [], 'no function longer than 80 lines without a comment saying why');

# --- Directive contexts -------------------------------------------------------
my $proxy = "<Proxy balancer://b>\nBalancerMember http://127.0.0.1:9 route=a\nProxySet lbmethod=aoai\n</Proxy>\n";
for my $case (
    [ 'AOAIMemberCredential a api-key env:HOME', 'server config' ],
    [ "<Location /x>\nAOAIMemberCredential a api-key env:HOME\n</Location>", '<Location>' ],
    [ "<VirtualHost 127.0.0.1:9>\nAOAIDeployment a gpt-4o\n</VirtualHost>", '<VirtualHost>' ],
    [ "<Proxy http://127.0.0.1:9>\nAOAIDeployment a gpt-4o\n</Proxy>", 'a <Proxy> that is no balancer' ]) {
    my ($ok, $out) = configtest($proxy . $case->[0] . "\n");
    ok(!$ok, "apache2 -t refuses $case->[0] in $case->[1]");
    like($out, qr/(AOAIMemberCredential|AOAIDeployment) belongs in the <Proxy balancer:\/\/\.\.\.> section/,
         '  saying where it belongs') or diag $out;
}
my ($ok, $out) = configtest("<Proxy balancer://b>\nBalancerMember http://127.0.0.1:9 route=a\n"
                            . "<IfModule aoai_balancer_module>\nAOAIDeployment a gpt-4o\n</IfModule>\n</Proxy>\n");
ok($ok, 'inside <IfModule> inside <Proxy balancer://...>: accepted') or diag $out;
for my $global (qw(AOAIThrottleTableSize AOAISharedCacheSync AOAISharedCacheTimeout)) {
    ($ok, $out) = configtest("<VirtualHost 127.0.0.1:9>\n$global 100\n</VirtualHost>\n");
    ok(!$ok, "$global in <VirtualHost>: refused");
    like($out, qr/$global cannot occur within <VirtualHost> section/, '  as server config only') or diag $out;
}

done_testing();
