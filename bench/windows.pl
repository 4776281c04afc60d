#!/usr/bin/perl
# Issue 19's scenario matrix: does the priority member serve its whole
# quota, and pay at most one 429 for it, whatever its windows are?
#
# Each row: a gateway with the default configuration (headroom on, no
# AOAIHeadroomWindow) in front of a priority member with a quota and an
# unlimited second member; 4 clients, not in step with each other or with
# the windows (each waits a random 0-2x its mean between calls), send the
# row's calls over its duration.  The mock member's windows open at the
# first call after the last one ended (as Azure's), or are fixed to the
# wall clock with a random phase.  The token row admits a call on its
# estimate (prompt + max_tokens, as Azure does) with calls of varied size.
#
# Per row: client success; the 429s the priority member sent, and per
# window; its 200s against what its quota allowed.  "Allowed" is the same
# calls, at the times they were sent, replayed against the member's quota
# rules as if every call had been offered to it first (a gateway that
# knew the member's windows exactly): so 100% is the best any gateway
# could do with these calls, not a count of windows.
#
#   perl bench/windows.pl            the matrix (about 4 minutes)
#   perl bench/windows.pl --short    short windows, 8 s a row, for CI
#                                    (t/30_windows_bench.t)
#   --seed N                         the clients' random gaps and phases
# Everything listens on 127.0.0.1 and is stopped by its PID at the end.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../t/lib";
use AOAITest;
use File::Temp qw(tempdir);
use Getopt::Long;
use JSON::PP;
use POSIX ();
use Time::HiRes qw(time sleep);

GetOptions('short' => \my $short, 'seed=i' => \(my $seed = 19))
    or die "usage: bench/windows.pl [--short] [--seed N]\n";
srand $seed;
my $clients = 4;

# name, window mode, requests per window, window ms, tokens per window,
# seconds, calls; tokens rows send calls of varied size.
my @rows = $short ? (
    [ '4 / 1.5 s, first call', 'first_call', 4, 1500, 0, 8, 80 ],
    [ '3 / 1 s, wall clock',   'wall_clock', 3, 1000, 0, 8, 80 ],
    [ '400 tokens / 2 s, first call', 'first_call', 0, 2000, 400, 8, 80 ],
) : (
    [ '20 / 10 s, first call', 'first_call', 20, 10000, 0, 30, 300 ],
    [ '20 / 10 s, wall clock', 'wall_clock', 20, 10000, 0, 30, 300 ],
    [ '12 / 6 s, first call',  'first_call', 12, 6000, 0, 30, 300 ],
    [ '12 / 6 s, wall clock',  'wall_clock', 12, 6000, 0, 30, 300 ],
    [ '3 / 1 s, first call',   'first_call', 3, 1000, 0, 30, 300 ],
    [ '3 / 1 s, wall clock',   'wall_clock', 3, 1000, 0, 30, 300 ],
    [ '2000 TPM, first call',  'first_call', 0, 60000, 2000, 150, 600 ],
);

my @members;
for my $i (0 .. $#rows) {
    my ($name, $mode, $requests, $window_ms, $tokens) = @{ $rows[$i] };
    my $phase = $mode eq 'wall_clock' ? int(rand($window_ms)) : 0;
    push @{ $rows[$i] }, $phase;
    push @members,
        { name => "p$i", quota => "$requests $window_ms" . ($tokens ? " $tokens" : ''),
          set => { window_mode => $mode, window_phase_ms => $phase,
                   ($tokens ? (quota_estimate => 'on') : ()) } },
        { name => "s$i" };
}
my $mock = start_mock(name => 'windows-mock', members => \@members);

sub gateway {
    my ($i) = @_;
    return start_gateway(name => "windows-gw$i", loglevel => 'warn', conf =>
        balancer_conf('aoai', members => [
            [ $mock->member_url("p$i"), lbset => 0, route => "p$i" ],
            [ $mock->member_url("s$i"), lbset => 1, route => "s$i" ] ])
      . "ProxyPass /openai balancer://aoai/openai\n"
      . "<Location /aoai-status>\n    SetHandler aoai-balancer-status\n</Location>\n");
}

# One client: its share of the calls, a random gap each, written as
# "sent status who prompt completion max_tokens" lines.
sub client {
    my ($gw, $row, $n, $out) = @_;
    my ($seconds, $tokens) = ($row->[5], $row->[4]);
    my $gap = $seconds / $n;
    open my $fh, '>', $out or POSIX::_exit(1);
    my $t0 = time;
    for (1 .. $n) {
        last if time - $t0 > $seconds + 5;
        sleep rand(2 * $gap);
        my %o = $tokens
            ? (max_tokens => (16, 40, 80, 150)[int rand 4],
               content => 'word ' x (5 + int rand 60))
            : ();
        my $sent = time;
        my $res = chat($gw, %o, timeout => 10);
        my $u = ($res->{json} && $res->{json}{usage}) || {};
        printf $fh "%.4f %d %s %d %d %d\n", $sent, $res->{status}, served_by($res),
            $u->{prompt_tokens} // 0, $u->{completion_tokens} // 0, $o{max_tokens} // 0;
    }
    close $fh;
    POSIX::_exit(0);
}

# The calls offered to the member first, at the times they were sent,
# against its quota rules: how many it could have served.
sub allowed {
    my ($row, @calls) = @_;
    my (undef, $mode, $requests, $window_ms, $tokens, undef, undef, $phase) = @$row;
    my $length = $window_ms / 1000;
    my ($start, $used_requests, $used_tokens, $served) = (-1e18, 0, 0, 0);
    for my $c (sort { $a->{sent} <=> $b->{sent} } @calls) {
        my $t = $c->{sent};
        my $open = $mode eq 'wall_clock'
            ? $t - POSIX::fmod($t - $phase / 1000, $length)
            : ($t >= $start + $length ? $t : $start);
        if ($open != $start) {
            ($start, $used_requests, $used_tokens) = ($open, 0, 0);
        }
        my $estimate = $c->{prompt} + ($c->{max_tokens} || $c->{completion});
        next if $requests && $used_requests + 1 > $requests;
        next if $tokens && $used_tokens + $estimate > $tokens;
        $used_requests++;
        $used_tokens += $c->{prompt} + $c->{completion};
        $served++;
    }
    return $served;
}

sub run_row {
    my ($i) = @_;
    my $row = $rows[$i];
    my ($name, $mode, $requests, $window_ms, $tokens, $seconds, $calls) = @$row;
    my $gw = gateway($i);
    my $dir = tempdir('aoai-windows-XXXXXX', TMPDIR => 1, CLEANUP => 1);
    my @pids;
    for my $c (1 .. $clients) {
        my $pid = fork // die "fork: $!";
        unless ($pid) {
            # each client its own random gaps: a forked child would
            # otherwise repeat its parent's, and the 4 clients would send
            # in bursts of 4, in step with each other
            srand($seed * 1000 + $i * 10 + $c);
            client($gw, $row, int($calls / $clients), "$dir/$c");
        }
        push @pids, $pid;
    }
    waitpid $_, 0 for @pids;
    my @done;
    for my $c (1 .. $clients) {
        open my $fh, '<', "$dir/$c" or next;
        for (<$fh>) {
            my ($sent, $status, $who, $prompt, $completion, $max) = split;
            push @done, { sent => $sent, status => $status, who => $who,
                          prompt => $prompt, completion => $completion,
                          max_tokens => $max };
        }
    }
    my $w = member_status($gw, 'aoai', "p$i")->{windows} || {};
    my $learned = join '; ', map {
        my $k = $w->{$_} || {};
        "$_: " . join ', ', map { "$_=" . ($k->{$_} // '-') } sort keys %$k
    } grep { $w->{$_} } qw(requests tokens);
    $gw->stop;
    my $ok = grep { $_->{status} == 200 } @done;
    my $p200 = grep { $_->{status} == 200 && $_->{who} eq "p$i" } @done;
    my $p429 = $mock->stats("p$i")->{status}{429} // 0;
    my $allowed = allowed($row, grep { $_->{status} == 200 } @done);
    my $span = @done ? (sort { $b <=> $a } map { $_->{sent} } @done)[0]
                       - (sort { $a <=> $b } map { $_->{sent} } @done)[0] : 0;
    my $windows = POSIX::ceil($span / ($window_ms / 1000)) || 1;
    return { name => $name, calls => scalar @done, success => @done ? $ok / @done : 0,
             p429 => $p429, windows => $windows, p200 => $p200, allowed => $allowed,
             learned => $learned };
}

my @results = map { run_row($_) } 0 .. $#rows;
$mock->stop;

print "Issue 19 scenario matrix (seed $seed" . ($short ? ', short form' : '') . "): "
    . "default configuration, $clients clients not in step\n\n";
print "| row | calls | client success | priority member's 429s (per window) | its 200s / allowed |\n";
print "| --- | --- | --- | --- | --- |\n";
for my $r (@results) {
    printf "| %s | %d | **%.3f** | %d (%.2f in %d windows) | %d / %d = **%.1f%%** |\n",
        $r->{name}, $r->{calls}, $r->{success}, $r->{p429}, $r->{p429} / $r->{windows},
        $r->{windows}, $r->{p200}, $r->{allowed},
        $r->{allowed} ? 100 * $r->{p200} / $r->{allowed} : 100;
}
print "\nWhat the gateway learned of each priority member at the end of its row:\n";
print "- $_->{name}: $_->{learned}\n" for @results;
