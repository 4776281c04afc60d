# Headroom routing: members say how much of their quota is left
# (x-ratelimit-remaining-requests, x-ratelimit-remaining-tokens) on every
# answer, and the lbmethod passes over a member whose figure would fall
# below AOAIHeadroomFloor with the call, before it has to answer 429.
#   - a member is left alone once its requests run out, with no 429, and
#     taken back when its quota window is over;
#   - calls in flight count before the member answers them: a burst does
#     not overshoot the member's last requests;
#   - tokens: the call's estimate (body and max_tokens) against the
#     member's remaining tokens;
#   - a floor as a percentage of the member's limit;
#   - when every member is low, calls still go by priority, so headroom
#     never refuses work a member would take;
#   - AOAIHeadroomFloor off gives the old behaviour; bad values fail -t.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use AOAITest;
use POSIX ();
use Time::HiRes qw(time sleep);
use File::Temp qw(tempdir);

# Who served each of $n calls, or the status of a call that was not served.
sub who_served {
    my ($gw, $n, %o) = @_;
    return map {
        my $res = chat($gw, %o);
        $res->{status} == 200 ? served_by($res) : "status $res->{status}"
    } 1 .. $n;
}

sub count_of { my ($who, @list) = @_; scalar grep { $_ eq $who } @list }

my $mock = start_mock(members => [
    { name => 'primary', quota => '5 3000' }, { name => 'secondary' },
    { name => 'burst', quota => '6 8000' }, { name => 'burst_spare' },
    { name => 'tokens', quota => '1000 4000 400' }, { name => 'tokens_spare' },
    { name => 'pct', quota => '10 8000' }, { name => 'pct_spare' },
    { name => 'low_a', quota => '5 8000' }, { name => 'low_b', quota => '5 8000' },
    { name => 'classic', quota => '3 8000' }, { name => 'classic_spare' },
]);

# 1. Requests: five calls fit the primary's window; the sixth goes to the
# secondary without a 429 from the primary.  After the window, back.
{
    my $gw = priority_gateway($mock, "    AOAIHeadroomWindow requests 3s\n", qw(primary secondary));
    my @who = who_served($gw, 12);
    is(count_of('primary', @who), 5, 'the primary serves the 5 calls of its window');
    is(count_of('secondary', @who), 7, 'the next 7 go to the secondary');
    is_deeply([ @who[0 .. 4] ], [ ('primary') x 5 ], 'the primary first, by priority');
    is($mock->stats('primary')->{status}{429} // 0, 0, 'the primary never had to answer 429');
    is($mock->stats('primary')->{requests}, 5, 'and was asked exactly 5 times');
    my $primary = member_status($gw, 'aoai', 'primary');
    is($primary->{headroom}{requests}{remaining}, 0, 'the JSON status shows its requests used up');
    is($primary->{headroom}{requests}{limit}, 4, '  and the largest figure it sent (its limit less one)');
    # The mock always says 120000 tokens.  Each call's estimate comes off
    # when it is sent, and the member's figure in its answer, made with
    # what the calls used, replaces the estimate (issue 19): with no call
    # in flight, the figure itself.
    is($primary->{headroom}{tokens}{remaining}, 120000,
       '  and its tokens as its last answer said, no call being in flight');
    sleep 3.2;
    @who = who_served($gw, 6);
    is(count_of('primary', @who), 5, 'after its window, the primary serves its next 5');
    is($mock->stats('primary')->{status}{429} // 0, 0, 'still without a 429');
    $gw->stop;
}

# 2. A burst: the member has 5 requests left, 10 calls arrive at once.  Each
# pick takes its request off the figure before the member answers, so
# exactly 5 go to it.
{
    # The window given: with it learned instead, the member's first
    # window ends with one 429 that teaches it (t/30_learned_windows.t).
    my $gw = priority_gateway($mock, "    AOAIHeadroomWindow requests 8s\n", qw(burst burst_spare));
    my @first = who_served($gw, 1);
    is($first[0], 'burst', 'the first call leaves the member 5 requests');
    my $dir = tempdir(CLEANUP => 1);
    my @pids;
    for my $i (1 .. 10) {
        my $pid = fork // die;
        if (!$pid) {
            my $res = chat($gw);
            open my $out, '>', "$dir/$i" or POSIX::_exit(1);
            print $out "$res->{status} ", served_by($res), "\n";
            close $out;
            POSIX::_exit(0);
        }
        push @pids, $pid;
    }
    waitpid $_, 0 for @pids;
    my @results = map { open my $in, '<', "$dir/$_" or die; my $l = <$in>; chomp $l; $l } 1 .. 10;
    is(scalar(grep { /^200 / } @results), 10, 'all 10 calls of the burst got 200');
    is(scalar(grep { / burst$/ } @results), 5, 'exactly 5 of them went to the member')
        or diag "@results";
    is($mock->stats('burst')->{status}{429} // 0, 0, 'the member never answered 429');
    $gw->stop;
}

# 3. Tokens: the mock counts body/4+1 prompt tokens plus max_tokens (at most
# 16) per call against 400 tokens per 4 s; the gateway estimates the same
# way and stops before a call would not fit.
{
    my $gw = priority_gateway($mock, "    AOAIHeadroomWindow tokens 4s\n", qw(tokens tokens_spare));
    my $cost = int(length(chat_body(max_tokens => 16)) / 4) + 1 + 16;
    my $fits = int(400 / $cost);
    my @who = who_served($gw, $fits + 3, max_tokens => 16);
    is(count_of('tokens', @who), $fits,
       "the member serves the $fits calls of $cost tokens its 400 allow");
    is(count_of('tokens_spare', @who), 3, 'the rest go to the next member');
    is($mock->stats('tokens')->{status}{429} // 0, 0, 'the member never answered 429');
    # Once the member's window is over it holds a full window again (the
    # largest figure plus the call that left it): the same calls fit, and
    # a call estimated at more than a whole window never does.
    sleep 4.1;
    @who = who_served($gw, $fits + 1, max_tokens => 16);
    is(count_of('tokens', @who), $fits, "after its window the member serves its $fits calls again");
    my @big = who_served($gw, 1, max_tokens => 1000);
    is($big[0], 'tokens_spare',
       'a call asking for 1000 tokens does not fit what the member has left');
    $gw->stop;
}

# 4. A floor as a percentage of the member's limit (the largest figure it
# has sent: 9 for a quota of 10, so a floor of 4): it keeps 4 requests in
# reserve and serves 6.
{
    my $gw = priority_gateway($mock, "    AOAIHeadroomFloor requests 50%\n    AOAIHeadroomWindow requests 8s\n",
                     qw(pct pct_spare));
    my @who = who_served($gw, 10);
    is(count_of('pct', @who), 6, 'a 50% floor keeps the member 4 requests of 10 in reserve');
    is(count_of('pct_spare', @who), 4, 'the rest went to the next member');
    $gw->stop;
}

# 5. Both members low (a floor of 2 of their 5): calls still go out by
# priority, and are served while a member has room.
{
    my $gw = priority_gateway($mock, "    AOAIHeadroomFloor requests 2\n    AOAIHeadroomWindow requests 8s\n",
                     qw(low_a low_b));
    my @who = who_served($gw, 10);
    is_deeply([ @who[0 .. 5] ], [ qw(low_a low_a low_a low_b low_b low_b) ],
              'each member serves down to its floor, by priority') or diag "@who";
    is_deeply([ @who[6 .. 7] ], [ qw(low_a low_a) ],
              'then, with both below the floor, the first by priority serves what it has left');
    is_deeply([ @who[8 .. 9] ], [ qw(low_b low_b) ],
              'and when it has nothing, the next one');
    is(scalar(grep { /^status/ } @who), 0, 'every call was served');
    $gw->stop;
}

# 6. Off: the old behaviour, a 429 and a failover.
{
    my $gw = priority_gateway($mock, "    AOAIHeadroomFloor requests off\n    AOAIHeadroomFloor tokens off\n",
                     qw(classic classic_spare));
    my @who = who_served($gw, 5);
    is(count_of('classic', @who), 3, 'with headroom off the member still serves its 3');
    is($mock->stats('classic')->{status}{429}, 1, 'and then answers a 429, failed over');
    is(count_of('classic_spare', @who), 2, 'the spare served the rest');
    $gw->stop;
}

# 7. Bad values.
for my $case (
    [ 'AOAIHeadroomFloor bytes 5', qr/AOAIHeadroomFloor: 'bytes' is neither 'requests' nor 'tokens'/ ],
    [ 'AOAIHeadroomFloor requests 150%', qr/AOAIHeadroomFloor requests: '150%' is not a number/ ],
    [ 'AOAIHeadroomFloor tokens -3', qr/AOAIHeadroomFloor tokens: '-3' is not a number/ ],
    [ 'AOAIHeadroomWindow tokens soon', qr/AOAIHeadroomWindow: 'soon' is not a positive duration/ ],
    [ 'AOAIHeadroomWindow bytes 10s', qr/AOAIHeadroomWindow: 'bytes' is neither/ ],
) {
    my ($ok, $out) = configtest("<Location /x>\n$case->[0]\n</Location>\n");
    ok(!$ok, "apache2 -t fails on: $case->[0]");
    like($out, $case->[1], '  naming the directive and why') or diag $out;
}

$mock->stop;
done_testing();
