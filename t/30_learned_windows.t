# Issue 19: each member's windows are learned from what it says, so that
# a priority member serves its whole quota and pays at most one 429 for it.
# Each signal against a real httpd and the mock, whose windows open at
# the first call after the last one ended (as Azure's) unless a case says
# otherwise; no AOAIHeadroomWindow, so nothing is assumed:
#   - a 429's retry-after-ms: one 429 teaches the window's end and length
#     (and one more whether windows are fixed to the clock), after which
#     the member is back the moment each window reopens, with no 429 and
#     all its quota used;
#   - the remaining figure going back up: a member that ran out is probed
#     by one call, whose 200 says a new window began;
#   - x-ratelimit-reset-*: the end is known from the first answer, and no
#     429 is needed at all;
#   - fallback: figures that never go back up, a 429 while the figures
#     say there is room, figures of 0 or -1 meaning "unknown": the member
#     is steered by 429s alone for that kind, one per window at worst,
#     its quota used; and learns afresh two of its windows later (four
#     after a second fallback);
#   - tokens: the call's estimate (prompt + max_tokens) against a token
#     window, learned the same way;
#   - windows fixed to the wall clock, with a phase of their own;
#   - a provisioned member's azure-openai-deployment-utilization;
#   - the status page shows each member's learned window.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use AOAITest;
use Time::HiRes qw(time sleep);

# Calls one after the other, $gap apart, for $seconds: [ time, who ] each.
sub drive {
    my ($gw, $seconds, $gap, %o) = @_;
    my (@calls, $t0);
    $t0 = time;
    while (time - $t0 < $seconds && @calls < 2000) {
        my $res = chat($gw, %o);
        push @calls, [ time - $t0, $res->{status} == 200 ? served_by($res) : "status $res->{status}" ];
        sleep $gap if $gap;
    }
    return @calls;
}

# The runs of calls the member served back to back: [ start, count ].
sub runs_of {
    my ($who, @calls) = @_;
    my @runs;
    my $in = 0;
    for my $c (@calls) {
        if ($c->[1] eq $who) {
            push @runs, [ $c->[0], 0 ] unless $in;
            $runs[-1][1]++;
            $in = 1;
        }
        else {
            $in = 0;
        }
    }
    return @runs;
}

sub count_429 { $_[0]->stats($_[1])->{status}{429} // 0 }
sub served    { scalar grep { $_->[1] eq $_[0] } @_[1 .. $#_] }

my $mock = start_mock(members => [
    { name => 'p429', quota => '4 1500' }, { name => 's429' },
    { name => 'pfig', quota => '3 600' }, { name => 'sfig' },
    { name => 'preset', quota => '4 1500', set => { limit_headers => 'on' } }, { name => 'sreset' },
    { name => 'pnever', quota => '4 1000', set => { remaining_never_reset => 'on' } }, { name => 'snever' },
    { name => 'proom', quota => '4 1000' }, { name => 'sroom' },
    { name => 'pagain', quota => '4 1000' }, { name => 'sagain' },
    { name => 'pneg', quota => '4 1000', set => { remaining_unknown => '-1' } }, { name => 'sneg' },
    { name => 'pzero', quota => '4 1000', set => { remaining_unknown => '0' } }, { name => 'szero' },
    { name => 'ptok', quota => '1000 2000 400', set => { quota_estimate => 'on' } }, { name => 'stok' },
    { name => 'pwall', quota => '4 1000', set => { window_mode => 'wall_clock', window_phase_ms => 370 } },
    { name => 'swall' },
    { name => 'pedge', quota => '3 1000', set => { window_mode => 'wall_clock', window_phase_ms => 0 } },
    { name => 'sedge' },
    { name => 'pptu', quota => '0 1500', set => { ptu_tokens => 300 } }, { name => 'sptu' },
]);

# 1. A 429's retry-after-ms.
{
    my $gw = priority_gateway($mock, '', qw(p429 s429));
    my @calls = drive($gw, 8, 0.04);
    # One 429 teaches the window's end; at most one more, sent where a
    # window fixed to the clock would have reopened, that these start at
    # a first call instead.  None after that, in any window.
    my $n429 = count_429($mock, 'p429');
    ok($n429 >= 1 && $n429 <= 2, "429 end: the member answered $n429 429s in 5 windows, to learn them");
    my @runs = runs_of('p429', @calls);
    is(scalar(grep { $_->[1] !~ /^(p429|s429)$/ } @calls), 0, '  every call was served');
    ok(@runs >= 4, '  it served ' . scalar(@runs) . ' windows');
    is_deeply([ map { $_->[1] } @runs[0 .. $#runs - 1] ], [ (4) x $#runs ],
              '  all 4 calls of every window') or diag explain \@runs;
    my @late = grep { $runs[$_][0] - $runs[$_ - 1][0] > 1.5 + 0.2 } 1 .. $#runs;
    is_deeply(\@late, [], '  each window taken up the moment it reopened (1.5 s apart)')
        or diag explain \@runs;
    my $w = member_status($gw, 'aoai', 'p429')->{windows}{requests};
    ok(abs($w->{length_ms} - 1500) <= 60, "  the status shows the learned length: $w->{length_ms} ms");
    like($w->{learned_from} // '', qr/^(429|length|figures)$/, "  and what placed its end: $w->{learned_from}");
    is($w->{fallback}, undef, '  no fallback');
    $gw->stop;
}

# 2. The figure going back up: the member runs out a little before its
# window ends; the one call that probes it finds a new window (a 200 with
# its figure back up) and no 429 is needed.
{
    my $gw = priority_gateway($mock, '', qw(pfig sfig));
    my @calls = drive($gw, 2.4, 0.25);
    is(count_429($mock, 'pfig'), 0, 'figure reset: no 429');
    is(served('pfig', @calls), scalar(@calls), '  the member served every call: the probe found its window reopened');
    my $w = member_status($gw, 'aoai', 'pfig')->{windows}{requests};
    is($w->{learned_from}, 'figures', '  the status says the window was placed by its figures');
    $gw->stop;
}

# 3. x-ratelimit-reset-*: the end is known from the first answer.
{
    my $gw = priority_gateway($mock, '', qw(preset sreset));
    my @calls = drive($gw, 5, 0.04);
    my @runs = runs_of('preset', @calls);
    is(count_429($mock, 'preset'), 0, 'reset headers: not one 429');
    is_deeply([ map { $_->[1] } @runs[0 .. $#runs - 1] ], [ (4) x $#runs ],
              '  all 4 calls of every window') or diag explain \@runs;
    my @late = grep { $runs[$_][0] - $runs[$_ - 1][0] > 1.5 + 0.2 } 1 .. $#runs;
    is_deeply(\@late, [], '  each window taken up when it reopened') or diag explain \@runs;
    is(member_status($gw, 'aoai', 'preset')->{windows}{requests}{learned_from}, 'reset-header',
       '  the status says so');
    $gw->stop;
}

# Reactive at worst: over $seconds of windows of $length s holding 4, at
# most one 429 per window and every window's 4 calls served.
sub reactive_ok {
    my ($name, $who, $seconds, @calls) = @_;
    my $windows = int($seconds / 1.0) + 1;
    my $n429 = count_429($mock, $who);
    ok($n429 <= $windows, "  $name: at most one 429 per window ($n429 in $windows windows)");
    my @runs = runs_of($who, @calls);
    my @short = grep { $_->[1] < 4 } @runs[1 .. $#runs - 1];
    is_deeply(\@short, [], "  $name: the member served all 4 calls of every window")
        or diag explain \@runs;
}

# 4. Fallbacks.
{
    my $gw = priority_gateway($mock, '', qw(pnever snever));
    my @calls = drive($gw, 4, 0.03);
    is(member_status($gw, 'aoai', 'pnever')->{windows}{requests}{fallback}, 'figures-did-not-go-back-up',
       'figures that never go back up: the requests fall back');
    reactive_ok('never going back up', 'pnever', 4, @calls);
    like($gw->error_log, qr/AOAI100: .*pnever's x-ratelimit-remaining-requests did not go back up/,
         '  and the log says so, naming the member');
    $gw->stop;
}
{
    my $gw = priority_gateway($mock, '', qw(proom sroom));
    is(served_by(chat($gw)), 'proom', 'one call leaves the member 3 of its 4');
    $mock->control('proom', { force_status => 429, force_count => 1,
                              retry_after_form => 'azure', retry_after_ms => 300 });
    my @calls = drive($gw, 4, 0.03);
    my $w = member_status($gw, 'aoai', 'proom')->{windows};
    is($w->{requests}{fallback}, '429-while-figures-said-room', 'a 429 while the figures said room: fallback');
    reactive_ok('429 with room', 'proom', 4, @calls);
    $gw->stop;
}
# A fallback is not for good: two windows of the learned length later the
# member's figures steer again, learned afresh; a second fallback waits
# twice as long.
sub relearns_in {
    my ($gw, $who) = @_;
    my $w = member_status($gw, 'aoai', $who)->{windows}{requests};
    my ($h, $m, $s) = ($w->{relearns} // '') =~ /T(\d\d):(\d\d):([\d.]+)Z$/ or return undef;
    my @now = gmtime;
    my $in = ($h * 3600 + $m * 60 + $s) - ($now[2] * 3600 + $now[1] * 60 + $now[0] + (time - int time));
    return $in < -43200 ? $in + 86400 : $in;
}
# A 429 on the second call of a fresh window (the first, a 200, leaves it
# 3 of 4): the model had room.  Returns the fallback the status shows.
sub room_429 {
    my ($gw) = @_;
    sleep 1.2;
    chat($gw);
    $mock->control('pagain', { force_status => 429, force_count => 1,
                               retry_after_form => 'azure', retry_after_ms => 200 });
    chat($gw);
    return member_status($gw, 'aoai', 'pagain')->{windows}{requests}{fallback};
}
{
    my $gw = priority_gateway($mock, '', qw(pagain sagain));
    drive($gw, 3, 0.04);
    my $length = member_status($gw, 'aoai', 'pagain')->{windows}{requests}{length_ms} // 0;
    ok(abs($length - 1000) <= 60, "relearning: the member's window learned first ($length ms)");
    is(room_429($gw), '429-while-figures-said-room', '  a 429 with room: fallback');
    my $in = relearns_in($gw, 'pagain');
    ok(defined $in && $in > 1.4 && $in <= 2.3,
       '  the status says it learns afresh two windows later (in ' . ($in // 'undef') . ' s)');
    sleep $in + 0.1 if defined $in && $in > 0;
    my $before = count_429($mock, 'pagain');
    my @calls = drive($gw, 4, 0.04);
    my $w = member_status($gw, 'aoai', 'pagain')->{windows}{requests};
    is($w->{fallback}, undef, '  then its figures steer again');
    ok(abs(($w->{length_ms} // 0) - 1000) <= 60, "  its window learned again ($w->{length_ms} ms)");
    my $again = count_429($mock, 'pagain') - $before;
    ok($again <= 2, "  at the cost of $again 429s in 4 windows");
    my @runs = runs_of('pagain', @calls);
    is_deeply([ map { $_->[1] } @runs[1 .. $#runs - 1] ], [ (4) x ($#runs - 1) ],
              '  all 4 calls of every window') or diag explain \@runs;
    like($gw->error_log, qr/AOAI102: .*pagain's requests windows are learned afresh/,
         '  and the log says so');
    room_429($gw);
    $in = relearns_in($gw, 'pagain');
    ok(defined $in && $in > 3.4 && $in <= 4.3,
       '  a second fallback waits four windows (' . ($in // 'undef') . ' s)');
    $gw->stop;
}
for my $case ([ 'pneg', 'sneg', '-1' ], [ 'pzero', 'szero', '0' ]) {
    my ($p, $s, $says) = @$case;
    my $gw = priority_gateway($mock, '', $p, $s);
    my @calls = drive($gw, 4, 0.03);
    reactive_ok("remaining $says", $p, 4, @calls);
    is(scalar(grep { $_->[1] !~ /^($p|$s)$/ } @calls), 0, "  remaining $says: every call was served");
    $gw->stop;
}

# 5. Tokens: 400 per 2 s, admitted on prompt + max_tokens as Azure does.
{
    my $gw = priority_gateway($mock, '', qw(ptok stok));
    my @calls = drive($gw, 7, 0.03, max_tokens => 40);
    my $n429 = count_429($mock, 'ptok');
    ok($n429 <= 2, "tokens: at most the two 429s that teach the window ($n429)");
    my $w = member_status($gw, 'aoai', 'ptok')->{windows}{tokens};
    ok(abs(($w->{length_ms} // 0) - 2000) <= 80, "  the token window learned: " . ($w->{length_ms} // 'none') . ' ms');
    my $cost = int(length(chat_body(max_tokens => 40)) / 4) + 1 + 40;
    my $fits = int(400 / $cost);
    my @runs = runs_of('ptok', @calls);
    my @short = grep { $_->[1] < $fits } @runs[1 .. $#runs - 1];
    is_deeply(\@short, [], "  every window's $fits calls served") or diag explain \@runs;
    $gw->stop;
}

# 6. Windows fixed to the wall clock, phase 370 ms: learned too, within a
# few 429s, and the member's quota used.
{
    my $gw = priority_gateway($mock, '', qw(pwall swall));
    my @calls = drive($gw, 6, 0.03);
    my $n429 = count_429($mock, 'pwall');
    ok($n429 <= 3, "wall clock: $n429 429s in 6 windows while it learned");
    my @runs = runs_of('pwall', @calls);
    my @short = grep { $_->[1] < 4 } @runs[1 .. $#runs - 1];
    is_deeply(\@short, [], '  all 4 calls of every window served') or diag explain \@runs;
    $gw->stop;
}

# A window that began while the last one still had room: the first call of
# a window 1 s long (3 calls) leaves 2, and so does the first call of the
# next.  The second figure, from a later call and not below the first, says
# a window began; the 429 that ends that window must not teach a length
# reaching back to the first call (1.1 s here, on a main that missed it).
{
    my $gw = priority_gateway($mock, '', qw(pedge sedge));
    my $at = sub {    # sleep until $ms past a whole second (phase 0)
        my ($ms) = @_;
        my $frac = time - int(time);
        sleep((($ms / 1000 - $frac) + 1) - int(($ms / 1000 - $frac) + 1));
    };
    $at->(850);
    my @who = (served_by(chat($gw)));
    $at->(30);
    push @who, map { served_by(chat($gw)) } 1 .. 4;
    is("@who", 'pedge pedge pedge pedge sedge',
       'a window\'s first call, then the next window\'s three and a 429');
    my $w = member_status($gw, 'aoai', 'pedge')->{windows}{requests};
    ok(($w->{length_ms} // 0) > 0 && $w->{length_ms} <= 1010,
       "  the length learned is the window's, not back to the call before ("
       . ($w->{length_ms} // 'none') . ' ms)');
    $gw->stop;
}

# 7. A provisioned member: azure-openai-deployment-utilization, no
# x-ratelimit-*; it admits calls while below 100% of its 300 tokens per
# 1.5 s and answers 429 at 100%.  The utilization is its headroom: the
# member is left alone once it says 100%, back when its window reopens.
{
    my $gw = priority_gateway($mock, '', qw(pptu sptu));
    my @calls = drive($gw, 7, 0.03);
    my $n429 = count_429($mock, 'pptu');
    ok($n429 <= 2, "utilization: at most the two 429s that teach the window ($n429)");
    my $cost = int(length(chat_body()) / 4) + 1 + 16;
    my $fits = int((300 + $cost - 1) / $cost);
    my @runs = runs_of('pptu', @calls);
    ok(@runs >= 4, '  it served ' . scalar(@runs) . ' windows');
    my @short = grep { $_->[1] < $fits } @runs[1 .. $#runs - 1];
    is_deeply(\@short, [], "  the $fits calls of every window served, to 100%") or diag explain \@runs;
    my @late = grep { $runs[$_][0] - $runs[$_ - 1][0] > 1.5 + 0.2 } 2 .. $#runs;
    is_deeply(\@late, [], '  each window taken up when it reopened') or diag explain \@runs;
    my $w = member_status($gw, 'aoai', 'pptu')->{windows}{tokens};
    ok(abs(($w->{length_ms} // 0) - 1500) <= 60, '  the window learned: ' . ($w->{length_ms} // 'none') . ' ms');
    is($w->{full}, 1000, '  its figure is the capacity left, in tenths of a percent');
    $gw->stop;
}

$mock->stop;
done_testing();
