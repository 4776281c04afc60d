# AOAIKeyTokensPerMinute: tokens per minute per subscription key, as API
# Management's azure-openai-token-limit with the subscription as counter.
#   - a call is estimated up front, ceil(body bytes / 4) plus max_tokens or
#     max_completion_tokens, and the estimate is replaced by the answer's
#     usage.total_tokens; a served call's x-ratelimit-remaining-tokens is
#     its key's (limit - used, this call's estimate included), not the
#     member's;
#   - a call whose estimate does not fit: 429 from the gateway, Retry-After
#     and retry-after-ms for the end of the key's minute, the key's
#     remaining tokens (never below 0), API Management's body, AOAI049 at
#     info, and no member called;
#   - keys are independent; a key's own line wins over the line for every
#     key, both ways; with labelled lines only, other keys are unlimited;
#   - a burst cannot overshoot: the estimate is taken before the call;
#   - a call no member served gives its estimate back;
#   - the count is one for every child process (prefork);
#   - bad lines fail apache2 -t naming the directive.
#
# Every call waits for its access log line before the next one: httpd
# writes it after the handler has settled the key's count, so the next
# call's figures do not race the previous call's correction.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use AOAITest;
use File::Temp qw(tempdir);
use IO::Handle;
use JSON::PP;
use POSIX ();
use Time::HiRes qw(time sleep);

my $JSON = JSON::PP->new->canonical;

# Subscription keys, as scripts/aoai-keyhash writes them.
my %key = map { $_ => "sk-$_-" . join('', map { ('a' .. 'z')[rand 26] } 1 .. 16) }
          qw(team_a team_b team_c team_d team_e team_f team_g);
my $secrets = tempdir('aoai-secrets-XXXXXX', TMPDIR => 1, CLEANUP => 1);
chmod 0755, $secrets;
my $keyfile = write_key_file("$secrets/subscription-keys", %key);

# A chat body whose length is not a multiple of 4, so that ceil(bytes / 4)
# is the same whichever way the rounding is written.
sub body {
    my (%o) = @_;
    for my $pad ('', '.', '..', '...') {
        my $body = $JSON->encode({
            messages => [
                ($o{tiny} ? () : { role => 'system', content => 'You are a helpful assistant.' }),
                { role => 'user', content => ($o{content}
                      // 'Hello! Please tell me the history of United States.') . $pad },
            ],
            (defined $o{max_tokens} ? (max_tokens => $o{max_tokens}) : ()),
            (defined $o{max_completion_tokens}
                ? (max_completion_tokens => $o{max_completion_tokens}) : ()),
        });
        return $body if length($body) % 4;
    }
}

sub estimate {
    my ($body) = @_;
    my $request = $JSON->decode($body);
    return int((length($body) + 3) / 4)
         + ($request->{max_tokens} // $request->{max_completion_tokens} // 0);
}

my $mock = start_mock(members => [ { name => 'east' }, { name => 'west' } ]);
my %url = map { $_ => $mock->member_url($_) } qw(east west);
sub member_requests { my $n = 0; $n += $mock->stats($_)->{requests} for qw(east west); $n }

my $plain = body();
my $E = estimate($plain);                        # a plain call's estimate
my $burst_limit = 3 * $E + int($E / 2);          # three estimates fit, not four
my $clamp_limit = $E + 8;                        # one estimate fits; its usage does not

sub gateway_conf {
    my ($extra) = @_;
    return "$extra\n"
         . balancer_conf('aoai', members => [
               [ $url{east}, lbset => 0, route => 'east' ],
               [ $url{west}, lbset => 1, route => 'west' ] ])
         . <<"EOF";
<Location /quota>
    AOAISubscriptionKeyFile $keyfile
    AOAIKeyTokensPerMinute 300
    AOAIKeyTokensPerMinute 2500 team_b
    AOAIKeyTokensPerMinute $burst_limit team_c
    AOAIKeyTokensPerMinute $clamp_limit team_e
</Location>
<Location /labelled>
    AOAISubscriptionKeyFile $keyfile
    AOAIKeyTokensPerMinute 10 team_g
</Location>
ProxyPass /quota/openai balancer://aoai/openai
ProxyPass /labelled/openai balancer://aoai/openai
EOF
}

# One call per key and the wait for its access log line (see above).
my %logged;
sub call {
    my ($gw, $label, %o) = @_;
    my $sent = time;
    my $res = chat($gw, path => ($o{prefix} // '/quota') . $CHAT_PATH,
                   headers => { 'api-key' => $key{$label} },
                   body => $o{body} // $plain);
    $res->{sent} = $sent;
    $res->{received} = time;
    my $want = ++$logged{ $gw->dir };
    my @log = access_log_records($gw, $want);
    die "no access log line for call $want on " . $gw->dir . "\n" unless @log >= $want;
    $res->{log} = $log[$want - 1];
    return $res;
}
sub remaining { $_[0]{headers}{'x-ratelimit-remaining-tokens'} }
sub used      { $_[0]{json}{usage}{total_tokens} }
sub ah10949   { scalar(() = $_[0]->error_log =~ /AOAI049/g) }
my $res;

my $gw = start_gateway(conf => gateway_conf(''));

# ---------------------------------------------------------------------
# 1. team_a, under the line for every key (300): each served call shows the
# key's remaining tokens; the first call that does not fit is refused.
my ($used_a, $served_a, $refused, $first_sent, $first_received) = (0, 0);
for my $n (1 .. 15) {
    my $fits = $E <= 300 - $used_a;
    my $before = member_requests();
    my $res = call($gw, 'team_a');
    ($first_sent, $first_received) = @$res{qw(sent received)} if $n == 1;
    if (!$fits) {
        is($res->{status}, 429, "team_a call $n: $E tokens do not fit in the "
                                . (300 - $used_a) . ' left: 429');
        is(member_requests(), $before, '  no member was called for it');
        $refused = $res;
        last;
    }
    is($res->{status}, 200, "team_a call $n: $E tokens fit in the " . (300 - $used_a) . " left: 200")
        or last;
    is(remaining($res), 300 - $used_a - $E,
       "  x-ratelimit-remaining-tokens: 300 - $used_a used - $E for this call");
    is(member_requests(), $before + 1, '  one member call');
    is($res->{log}{key}, 'team_a', '  logged under team_a');
    cmp_ok(used($res) // 0, '>', $E, "  the member counted more than the estimate ($E)");
    $used_a += used($res);
    $served_a++;
}
cmp_ok($served_a, '>=', 2, "team_a was served $served_a times before its minute was used up");
ok($refused, 'team_a was refused once its tokens ran out') or BAIL_OUT('no refusal to look at');

my $ra = $refused->{headers}{'retry-after'} // '';
my $ra_ms = $refused->{headers}{'retry-after-ms'} // '';
like($ra, qr/^[1-9][0-9]*$/, "  Retry-After in whole seconds, at least 1 ($ra)");
like($ra_ms, qr/^[0-9]+$/, "  retry-after-ms ($ra_ms)");
{
    # The key's minute opened between sending and receiving its first call;
    # the refusal was decided between sending and receiving this one.
    my $low = $first_sent + 60 - $refused->{received};
    my $high = $first_received + 60 - $refused->{sent};
    cmp_ok($ra_ms, '>=', int($low * 1000) - 50, "  retry-after-ms is the end of team_a's minute (>= ${\ int($low * 1000)})");
    cmp_ok($ra_ms, '<=', int($high * 1000) + 50, "  (<= ${\ int($high * 1000)})");
    my $ceil = int(($ra_ms + 999) / 1000);
    is($ra, $ceil < 1 ? 1 : $ceil, '  Retry-After is the same wait in whole seconds, rounded up');
}
is(remaining($refused), 300 - $used_a > 0 ? 300 - $used_a : 0,
   "  x-ratelimit-remaining-tokens is what the key has left (" . (300 - $used_a) . ')');
like($refused->{headers}{'content-type'} // '', qr{^application/json}, '  a JSON body');
is_deeply($refused->{json}, { statusCode => 429,
    message => "Token limit is exceeded. Try again in $ra seconds." },
    "  in API Management's shape") or diag $refused->{content};
is($refused->{log}{status}, 429, '  logged as 429');
is($refused->{log}{backend}, '-', '  with no member');
is($refused->{log}{attempts}, 0, '  and no attempt');
is(ah10949($gw), 1, 'one AOAI049 line for the one refusal');
like($gw->error_log, qr/\[aoai_balancer:info\][^\n]*AOAI049:[^\n]*team_a/, '  at info, naming the key label');
unlike($gw->error_log, qr/\Q$key{team_a}\E/, '  and never the key itself');

# The refusal is about that call's estimate: a call small enough for what
# is left is still served, and the next that is not is refused.
{
    my $tiny = body(tiny => 1, content => 'Hi.');
    my $t = estimate($tiny);
    my $left = 300 - $used_a;
    cmp_ok($t, '<=', $left, "(a call of $t tokens fits in the $left left)");
    $res = call($gw, 'team_a', body => $tiny);
    is($res->{status}, 200, "team_a: a $t-token call after the refusal is served");
    is(remaining($res), $left - $t, '  leaving ' . ($left - $t));
    $used_a += used($res);
    $res = call($gw, 'team_a');
    is($res->{status}, 429, 'then a plain call is refused again');
    is(remaining($res), 300 - $used_a > 0 ? 300 - $used_a : 0,
       "  with what is left, never below 0 (300 - $used_a)");
}

# ---------------------------------------------------------------------
# 2. Other keys are not touched by team_a's minute: team_d falls under the
# line for every key and has its own 300; team_b's own line wins.
$res = call($gw, 'team_d');
is($res->{status}, 200, 'team_d, under the same line for every key, is served');
is(remaining($res), 300 - $E, '  from a 300 of its own');
my $used_d = used($res);

my $used_b = 0;
$res = call($gw, 'team_b');
is($res->{status}, 200, 'team_b is served');
is(remaining($res), 2500 - $E, "  from its own line's 2500, not the 300 for every key");
$used_b += used($res);

# ---------------------------------------------------------------------
# 3. The estimate gives way to the usage the member reports: max_tokens
# 1000 is estimated at more than 1000 tokens, the member uses 16.
{
    my $big = body(max_tokens => 1000);
    my $big_estimate = estimate($big);
    my $first = call($gw, 'team_b', body => $big);
    is($first->{status}, 200, "team_b asks for 1000 completion tokens (estimate $big_estimate, over the 300 for every key): 200");
    is(remaining($first), 2500 - $used_b - $big_estimate, '  remaining counts the whole estimate while the call runs');
    is($first->{json}{usage}{completion_tokens}, 16, '  the member used 16 completion tokens');
    $used_b += used($first);

    my $second_body = body(max_tokens => 1000, content => 'And of Canada?');
    my $second_estimate = estimate($second_body);
    my $second = call($gw, 'team_b', body => $second_body);
    is($second->{status}, 200, 'a second such call: 200');
    is(remaining($second), 2500 - $used_b - $second_estimate,
       "  remaining: 2500 - $used_b really used - $second_estimate for this call");
    cmp_ok(remaining($second), '>', 2500 - $big_estimate - $second_estimate,
           '  higher than if the first estimate had stood');
    $used_b += used($second);

    my $mct = body(max_completion_tokens => 500);
    $res = call($gw, 'team_b', body => $mct);
    is($res->{status}, 200, 'max_completion_tokens 500: 200');
    is(remaining($res), 2500 - $used_b - estimate($mct),
       '  estimated with its 500 completion tokens (' . estimate($mct) . ')');
    $used_b += used($res);
}

# When the usage is more than the estimate (no max_tokens: the member adds
# its 16 completion tokens), what is left can go below 0: it shows as 0.
$res = call($gw, 'team_e');
is($res->{status}, 200, "team_e's $clamp_limit tokens fit one $E-token estimate");
is(remaining($res), $clamp_limit - $E, "  leaving " . ($clamp_limit - $E));
my $used_e = used($res) // 0;
cmp_ok($used_e, '>', $clamp_limit, "  but the member counted $used_e");
$res = call($gw, 'team_e', body => body(content => 'x'));
is($res->{status}, 429, 'the next team_e call is refused');
is(remaining($res), 0, '  with 0 tokens left, not ' . ($clamp_limit - $used_e));

# Where only labelled lines are, a key without one has no limit.
$res = call($gw, 'team_f', prefix => '/labelled', body => body(max_tokens => 50000));
is($res->{status}, 200, '/labelled: team_f, without a line there, is served an estimate of '
                        . estimate(body(max_tokens => 50000)));
$res = call($gw, 'team_f', prefix => '/labelled');
is($res->{status}, 200, '  and again');
$res = call($gw, 'team_g', prefix => '/labelled');
is($res->{status}, 429, '  while team_g, with its own 10 there, is refused');

# ---------------------------------------------------------------------
my $burst_refused = 0;
# 4. A burst of 8 concurrent calls for team_c, whose limit fits three
# estimates: the member answers slowly, so no call is settled before all
# have been counted; three are served, with the three figures that taking
# an estimate each gives, and the others are refused without a member.
{
    $mock->control($_, { latency_ms => 800 }) for qw(east west);
    my $before = member_requests();
    my $results = tempdir(CLEANUP => 1);
    pipe(my $go_read, my $go_write) or die "pipe: $!";
    my @pids;
    for my $i (1 .. 8) {
        my $sock = raw_connect($gw);
        my $pid = fork // die "fork: $!";
        if (!$pid) {
            alarm 25;
            close $go_write;
            scalar <$go_read>;               # EOF: everyone goes at once
            my $r = eval { AOAITest::raw_request($sock, body => $plain,
                path => "/quota$CHAT_PATH", headers => { 'api-key' => $key{team_c} }) };
            open my $out, '>', "$results/$i" or POSIX::_exit(1);
            print $out $JSON->encode({ status => $r ? $r->{status} : 0,
                remaining => $r ? $r->{headers}{'x-ratelimit-remaining-tokens'} : undef,
                used => $r && $r->{json} && $r->{json}{usage} ? $r->{json}{usage}{total_tokens} : undef });
            close $out;
            POSIX::_exit(0);
        }
        close $sock;
        push @pids, $pid;
    }
    close $go_read;
    close $go_write;
    my $deadline = time + 28;
    my %left = map { $_ => 1 } @pids;
    while (%left && time < $deadline) {
        delete $left{$_} for grep { waitpid($_, POSIX::WNOHANG()) != 0 } keys %left;
        sleep 0.05;
    }
    kill 'KILL', keys %left;
    waitpid $_, 0 for keys %left;
    ok(!%left, 'the 8 burst calls all finished');
    my @r = map { my $in; open($in, '<', "$results/$_") ? $JSON->decode(scalar <$in>) : { status => 0 } } 1 .. 8;
    my @ok = grep { $_->{status} == 200 } @r;
    my @no = grep { $_->{status} == 429 } @r;
    cmp_ok(scalar @ok, '<=', 3, "a burst of 8 for $burst_limit tokens: at most 3 served (" . scalar(@ok) . ')');
    is(scalar @ok, 3, '  and, all counted before any was settled, exactly 3');
    $burst_refused = @no;
    is(scalar(@ok) + scalar(@no), 8, '  the others got 429')
        or diag explain [ map { $_->{status} } @r ];
    is_deeply([ sort { $a <=> $b } map { $_->{remaining} // -1 } @ok ],
              [ map { $burst_limit - $_ * $E } 3, 2, 1 ],
              '  the served ones saw the limit less one, two and three estimates');
    is(member_requests(), $before + @ok, '  only the served calls reached a member');
    my @log = access_log_records($gw, $logged{ $gw->dir } += 8);
    is(scalar(grep { $_->{key} eq 'team_c' && $_->{status} == 429 && $_->{backend} eq '-' } @log),
       scalar @no, '  the refused ones are logged as 429 with no member');
    $mock->control($_, { latency_ms => 0 }) for qw(east west);

    my $used_c = 0;
    $used_c += $_->{used} // 0 for @ok;
    $res = call($gw, 'team_c', body => body(content => 'x'));
    is($res->{status}, 429, 'after the burst, team_c is refused');
    my $left = $burst_limit - $used_c;
    is(remaining($res), $left > 0 ? $left : 0, "  with what the member counted taken ($used_c tokens)");
}

# ---------------------------------------------------------------------
# 5. A call that every member fails gives its estimate back.
{
    $mock->control($_, { force_status => 500, force_count => 100 }) for qw(east west);
    my %before = map { $_ => $mock->stats($_)->{requests} } qw(east west);
    my $failed = call($gw, 'team_d');
    isnt($failed->{status}, 200, "team_d's call that east and west both answer 500: $failed->{status}");
    like($failed->{status}, qr/^5\d\d$/, '  a 5xx from the gateway');
    is_deeply({ map { $_ => $mock->stats($_)->{requests} - $before{$_} } qw(east west) },
              { east => 1, west => 1 }, '  after one call to each member');
    $mock->control($_, { force_status => 0, force_count => 0 }) for qw(east west);
    $res = call($gw, 'team_d');
    is($res->{status}, 200, 'the next team_d call is served');
    is(remaining($res), 300 - $used_d - $E,
       "  and sees 300 - $used_d - $E, as if the failed call had not been made");
}

is(ah10949($gw), 2 + 1 + 1 + $burst_refused + 1,
   'one AOAI049 line per refusal: team_a twice, team_e, team_g, the burst, team_c after it');
$gw->stop;

# ---------------------------------------------------------------------
# 6. prefork: calls on connections held open by three different children
# see one count for team_a.
{
    my $pre = start_gateway(mpm => 'prefork', conf => gateway_conf('KeepAliveTimeout 20'));
    my @socks = map { raw_connect($pre) } 1 .. 3;
    my ($used, $served, $refusal, $logged) = (0, 0, undef, 0);
    my %pid_of_call;
    for my $n (1 .. 15) {
        my $fits = $E <= 300 - $used;
        my $r = raw_request($socks[($n - 1) % 3], body => $plain, path => "/quota$CHAT_PATH",
                            headers => { 'api-key' => $key{team_a} });
        my @log = access_log_records($pre, ++$logged);
        my $pid = @log >= $logged ? $log[-1]{pid} : '?';
        if (!$fits) {
            is($r->{status}, 429, "prefork: team_a call $n (child $pid) does not fit: 429");
            is(remaining($r), 300 - $used > 0 ? 300 - $used : 0, '  with the key\'s tokens left across children');
            $refusal = 1;
            last;
        }
        is($r->{status}, 200, "prefork: team_a call $n, in child $pid: 200") or last;
        is(remaining($r), 300 - $used - $E, "  remaining 300 - $used - $E, whichever child counted the $used");
        $pid_of_call{$n} = $pid;
        $used += $r->{json}{usage}{total_tokens} // 0;
        $served++;
    }
    ok($refusal, 'prefork: team_a was refused');
    is($served, $served_a, "  after the same $served_a calls as under event");
    my %pids = map { $_ => 1 } values %pid_of_call;
    cmp_ok(scalar(keys %pids), '>=', 2, '  served by ' . scalar(keys %pids) . ' child processes');
    close $_ for @socks;
    unlike($pre->error_log, qr/exit signal|AH00052/, '  no child crashed');
    $pre->stop;
}

# ---------------------------------------------------------------------
# 7. Configuration.
my $proxy = sub {
    my ($inside) = @_;
    return balancer_conf('q', members => [ [ 'http://127.0.0.1:9', route => 'a' ] ],
                         inside => "$inside\n");
};
for my $good (
    [ 'in server context', "AOAIKeyTokensPerMinute 1000\nAOAIKeyTokensPerMinute 50 team_a\n" ],
    [ 'in <Location>', "<Location /x>\nAOAIKeyTokensPerMinute 1000\nAOAIKeyTokensPerMinute 50 team_a\n"
                      . "AOAIKeyTokensPerMinute 70 team_b\n</Location>\n" ],
    [ 'in <Proxy>', $proxy->("AOAIKeyTokensPerMinute 1000\nAOAIKeyTokensPerMinute 1 team_a") ],
    [ 'the same label in two contexts', "AOAIKeyTokensPerMinute 5 team_a\n<Location /x>\nAOAIKeyTokensPerMinute 6 team_a\n</Location>\n" ],
) {
    my ($ok, $out) = configtest($good->[1]);
    ok($ok, "apache2 -t passes: AOAIKeyTokensPerMinute $good->[0]") or diag $out;
}
for my $bad (
    [ "AOAIKeyTokensPerMinute lots", qr/AOAIKeyTokensPerMinute\b.*'lots'/ ],
    [ "AOAIKeyTokensPerMinute 0", qr/AOAIKeyTokensPerMinute\b.*'0'/ ],
    [ "AOAIKeyTokensPerMinute 0 team_a", qr/AOAIKeyTokensPerMinute\b.*'0'/ ],
    [ "AOAIKeyTokensPerMinute -5", qr/AOAIKeyTokensPerMinute\b.*'-5'/ ],
    [ "AOAIKeyTokensPerMinute 10k team_a", qr/AOAIKeyTokensPerMinute\b.*'10k'/ ],
    [ "AOAIKeyTokensPerMinute 10\nAOAIKeyTokensPerMinute 20", qr/AOAIKeyTokensPerMinute\b.*every key/ ],
    [ "AOAIKeyTokensPerMinute 10 team_a\nAOAIKeyTokensPerMinute 10 team_b\nAOAIKeyTokensPerMinute 20 team_a",
      qr/AOAIKeyTokensPerMinute\b.*team_a/ ],
) {
    (my $name = $bad->[0]) =~ s/\n/; /g;
    for my $where ([ '<Location>', "<Location /x>\n$bad->[0]\n</Location>\n" ],
                   [ '<Proxy>', $proxy->($bad->[0]) ]) {
        my ($ok, $out) = configtest($where->[1]);
        ok(!$ok, "apache2 -t fails in $where->[0] on: $name");
        like($out, $bad->[1], '  naming AOAIKeyTokensPerMinute and what is wrong') or diag $out;
    }
}

$mock->stop;
done_testing();
