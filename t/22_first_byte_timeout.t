# Issue 11, first-byte timeout: a member that accepts a call but sends no
# answer within AOAIFirstByteTimeout is treated like a timeout at once (the
# call fails over, nothing has reached the client), while a stream whose
# headers came in time is never cut however long it runs.  By default the
# timeout applies to streamed calls ("stream": true), whose first byte is
# the start of the stream; "all" applies it to every call.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time);
use AOAITest;

my $mock = start_mock(members => [ map { { name => $_ } } qw(slow fast streamer) ]);
my %url = map { $_ => $mock->member_url($_) } qw(slow fast streamer);

my $gw = start_gateway(conf =>
    balancer_conf('aoai', members => [
        [ $url{slow}, lbset => 0, route => 'slow' ],
        [ $url{fast}, lbset => 1, route => 'fast' ] ],
        inside => [ 'AOAIFirstByteTimeout 800ms' ])
  . balancer_conf('streams', members => [
        [ $url{streamer}, lbset => 0, route => 'streamer' ],
        [ $url{fast}, lbset => 1, route => 'fast' ] ],
        inside => [ 'AOAIFirstByteTimeout 800ms' ])
  . <<"EOF");
<Location /all>
    AOAIFirstByteTimeout 800ms all
</Location>
<Location /off>
    AOAIFirstByteTimeout Off
</Location>
ProxyPass /all/openai balancer://aoai/openai
ProxyPass /off/openai balancer://aoai/openai
ProxyPass /streams/openai balancer://streams/openai
ProxyPass /openai balancer://aoai/openai
EOF

sub timed {
    my (%o) = @_;
    my $t0 = time;
    my $res = chat($gw, %o);
    return ($res, time - $t0);
}

# The slow member answers after 2.5 s.
$mock->control('slow', { latency_ms => 2500 });

my ($res, $took) = timed(stream => 1);
is($res->{status}, 200, 'streamed call to a member that says nothing: served');
is(served_by($res), 'fast', '  by the next member');
like($res->{content}, qr/data: \[DONE\]/, '  the whole stream');
ok($took >= 0.7 && $took < 2.3, sprintf('  after the first-byte timeout, not the slow answer (%.2f s)', $took));
is($mock->stats('slow')->{requests}, 1, '  the slow member did get the call');
my @log = access_log_records($gw, 1);
is($log[-1]{attempts}, 2, '  two attempts in the access log');
like($gw->error_log, qr/AOAI034: balancer:\/\/aoai: member \Q$url{slow}\E sent no answer within the first-byte timeout of 800 ms/,
     '  and the error log says why (AOAI034)');

# Not streamed: the default leaves long non-streamed answers alone.
($res, $took) = timed();
is(served_by($res), 'slow', 'a non-streamed call waits for a slow member by default');
ok($took >= 2.4, sprintf('  (%.2f s)', $took));

($res, $took) = timed(path => "/all$AOAITest::CHAT_PATH");
is(served_by($res), 'fast', 'with "all", a non-streamed call fails over too');
ok($took < 2.3, sprintf('  (%.2f s)', $took));

($res, $took) = timed(path => "/off$AOAITest::CHAT_PATH", stream => 1);
is(served_by($res), 'slow', 'AOAIFirstByteTimeout Off: the stream waits for the slow member');

# A stream that starts at once and runs for 3 s, a chunk every 500 ms:
# longer than the first-byte timeout, and never cut by it.
$mock->control('streamer', { stream_chunks => 6, stream_delay_ms => 500 });
($res, $took) = timed(path => "/streams$AOAITest::CHAT_PATH", stream => 1);
is($res->{status}, 200, 'a slow stream');
is(served_by($res), 'streamer', '  served by the member that started it');
my $chunks = () = $res->{content} =~ /^data: \{/mg;
is($chunks, 6, '  all 6 chunks arrived');
ok($took >= 2.4, sprintf('  over %.2f s, far past the first-byte timeout', $took));
is($mock->stats('fast')->{requests}, 2, '  and nothing went to the next member');

# Bad values fail apache2 -t, naming the directive.
for my $bad ('AOAIFirstByteTimeout soon', 'AOAIFirstByteTimeout 5 sometimes') {
    my ($ok, $out) = configtest("<Proxy balancer://x>\n    BalancerMember http://127.0.0.1:9\n    $bad\n</Proxy>\n");
    ok(!$ok, "apache2 -t refuses '$bad'");
    like($out, qr/AOAIFirstByteTimeout: '(soon|sometimes)' is/, '  and names the directive and the value');
}

$gw->stop;
$mock->stop;
done_testing();
