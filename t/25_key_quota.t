# AOAIKeyTokensPerMinute: tokens per minute per subscription key, as API
# Management's azure-openai-token-limit.
#   - a call is estimated up front (body/4 + 1, plus max_tokens) and the
#     estimate replaced by the answer's usage; the client's
#     x-ratelimit-remaining-tokens is its key's;
#   - over the limit: 429 from the gateway, Retry-After and the key's
#     remaining tokens, API Management's body, no member called;
#   - keys are independent; a key's own line wins over the line for all;
#   - a burst cannot overshoot: the estimate is taken before the call;
#   - a call no member served gives its estimate back;
#   - the count is shared by every child process;
#   - bad lines fail apache2 -t.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use AOAITest;
use POSIX ();
use File::Temp qw(tempdir);
use Time::HiRes qw(time sleep);

my $secrets = tempdir(CLEANUP => 1);
my %key = (team_a => 'key-of-team-a', team_b => 'key-of-team-b',
           team_c => 'key-of-team-c', team_d => 'key-of-team-d');
my $keyfile = "$secrets/keys";
system("printf '%s' '$key{$_}' | $TOP/scripts/aoai-keyhash $_ >> $keyfile") for sort keys %key;

my $mock = start_mock(members => [ { name => 'primary' }, { name => 'secondary' } ]);
my %url = map { $_ => $mock->member_url($_) } qw(primary secondary);

sub gateway {
    my (%o) = @_;
    return start_gateway(mpm => $o{mpm} || 'event', conf => <<"EOF");
<Proxy balancer://aoai>
    BalancerMember $url{primary} lbset=0 route=primary
    BalancerMember $url{secondary} lbset=1 route=secondary
    ProxySet lbmethod=aoai
</Proxy>
ProxyPass /openai balancer://aoai/openai
<Location /openai>
    AOAISubscriptionKeyFile $keyfile
    AOAIKeyTokensPerMinute 300
    AOAIKeyTokensPerMinute 1000 team_b
    AOAIKeyTokensPerMinute 150 team_c
</Location>
EOF
}

sub call {
    my ($gw, $label, %o) = @_;
    return chat($gw, headers => { 'api-key' => $key{$label} }, %o);
}
sub estimate { my (%o) = @_; int(length(chat_body(%o)) / 4) + 1 + ($o{max_tokens} // 0) }
sub used_by  { $_[0]->{json}{usage}{total_tokens} }

my $gw = gateway();

# 1. Remaining goes down by what calls really used; the call that does not
# fit is refused by the gateway.
my $cost = estimate();
my ($used, $served) = (0, 0);
my $refused;
for (1 .. 10) {
    my $before = $mock->stats('primary')->{requests};
    my $res = call($gw, 'team_a');
    if ($res->{status} == 429) {
        $refused = $res;
        is($mock->stats('primary')->{requests}, $before, 'the refused call reached no member');
        last;
    }
    is($res->{status}, 200, "call $_ of team_a is served");
    is($res->{headers}{'x-ratelimit-remaining-tokens'}, 300 - $used - $cost,
       "  x-ratelimit-remaining-tokens is the key's: 300 - $used used - $cost for this call");
    $used += used_by($res);
    $served++;
}
my $per_call = $served ? $used / $served : 0;
is($served, int((300 - $cost) / $per_call) + 1,
   "team_a was served while its estimate fitted: $served calls of $per_call tokens");
ok($refused, 'then the gateway refused one');
is($refused->{headers}{'x-ratelimit-remaining-tokens'}, 300 - $used,
   "  with the key's remaining tokens (" . (300 - $used) . ')');
like($refused->{headers}{'retry-after'} // '', qr/^[1-9]\d*$/, '  a Retry-After in whole seconds');
cmp_ok($refused->{headers}{'retry-after'} // 99, '<=', 60, '  no later than the key\'s minute ends');
like($refused->{headers}{'retry-after-ms'} // '', qr/^\d+$/, '  and retry-after-ms');
is_deeply($refused->{json}, { statusCode => 429,
    message => "Token limit is exceeded. Try again in $refused->{headers}{'retry-after'} seconds." },
    "  API Management's body");
like($gw->error_log, qr/AH10949: balancer:\/\/aoai: subscription key team_a is over its 300 tokens per minute/,
     'AH10949 names the key and its limit');
unlike($gw->error_log, qr/\Q$key{team_a}\E/, 'and never the key itself');

# 2. Other keys: team_b has its own line, team_d falls under the line for all.
is(call($gw, 'team_b')->{status}, 200, 'team_b is not affected by team_a');
is(call($gw, 'team_d')->{status}, 200, 'nor is team_d, which has its own 300');

# 3. The estimate is replaced by what the member counted: a call asking for
# 400 completion tokens is estimated high, but the member used 16.
{
    my $big = estimate(max_tokens => 400);
    my $first = call($gw, 'team_b', max_tokens => 400);
    is($first->{status}, 200, "a call asking for 400 completion tokens is served (estimate $big)");
    my $left_before = $first->{headers}{'x-ratelimit-remaining-tokens'};
    my $second = call($gw, 'team_b', max_tokens => 400);
    is($second->{status}, 200, '  and the next one');
    is($second->{headers}{'x-ratelimit-remaining-tokens'}, $left_before + $big - used_by($first) - $big,
       'the next call sees what the previous one used, not its estimate of ' . $big)
        or diag "first: $left_before, big $big, used " . used_by($first);
}

# 4. A burst of 8 calls for a key whose 150 tokens fit only a few estimates:
# no more than that get through.
{
    my $fit = int(150 / $cost);
    my $dir = tempdir(CLEANUP => 1);
    my @pids;
    for my $i (1 .. 8) {
        my $pid = fork // die;
        if (!$pid) {
            my $res = call($gw, 'team_c');
            open my $out, '>', "$dir/$i" or POSIX::_exit(1);
            print $out $res->{status};
            close $out;
            POSIX::_exit(0);
        }
        push @pids, $pid;
    }
    waitpid $_, 0 for @pids;
    my @status = map { open my $in, '<', "$dir/$_" or die; scalar <$in> } 1 .. 8;
    my $ok = grep { $_ eq '200' } @status;
    cmp_ok($ok, '<=', $fit, "a burst of 8: at most the $fit estimates that fit were served ($ok)");
    cmp_ok($ok, '>=', 1, '  and at least one');
    is(scalar(grep { $_ eq '429' } @status), 8 - $ok, '  the others got 429');
}

# 5. A call that no member serves gives its estimate back.
{
    my $gw2 = gateway();
    my $first = call($gw2, 'team_d');
    my $left = $first->{headers}{'x-ratelimit-remaining-tokens'} + $cost - used_by($first);
    $mock->control($_, { force_status => 500, force_count => 1 }) for qw(primary secondary);
    is(call($gw2, 'team_d')->{status}, 503, 'a call every member fails gets 503');
    my $after = call($gw2, 'team_d');
    is($after->{headers}{'x-ratelimit-remaining-tokens'}, $left - $cost,
       '  and the next call sees the tokens as if it had not been made');
    $gw2->stop;
}
$gw->stop;

# 6. Every child process counts against the same minute.
{
    my $pre = gateway(mpm => 'prefork');
    my @pids = map { call($pre, 'team_a') } 1 .. 12;
    my %status;
    $status{ $_->{status} }++ for @pids;
    ok($status{429}, 'prefork: the key is refused once its minute is used up');
    my @log = access_log_records($pre, 12);
    my %pids = map { $_->{pid} => 1 } @log;
    cmp_ok(scalar keys %pids, '>', 1, '  by calls served in ' . scalar(keys %pids) . ' child processes');
    is($status{200}, $served, "  after the same $served calls as with one process");
    $pre->stop;
}

# 7. Bad lines.
for my $case (
    [ "AOAIKeyTokensPerMinute lots", qr/AOAIKeyTokensPerMinute: 'lots' is not a number of tokens/ ],
    [ "AOAIKeyTokensPerMinute 0", qr/AOAIKeyTokensPerMinute: '0' is not a number of tokens/ ],
    [ "AOAIKeyTokensPerMinute 10\nAOAIKeyTokensPerMinute 20", qr/AOAIKeyTokensPerMinute: every key already has a limit here/ ],
    [ "AOAIKeyTokensPerMinute 10 team_a\nAOAIKeyTokensPerMinute 20 team_a", qr/AOAIKeyTokensPerMinute: team_a already has a limit here/ ],
) {
    my ($ok, $out) = configtest("<Location /x>\n$case->[0]\n</Location>\n");
    ok(!$ok, "apache2 -t fails on: " . ($case->[0] =~ s/\n/; /r));
    like($out, $case->[1], '  naming the directive and why') or diag $out;
}

$mock->stop;
done_testing();
