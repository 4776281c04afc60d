# Behaviour 4: on a failure named in AOAIFailoverOn the same request -
# method, path, query, headers, body - goes to the next member before any
# byte reaches the client.  The mocks hash every body they receive; the
# member that serves must have received exactly the client's bytes.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep);
use AOAITest;

my $mock = start_mock(members => [ map { { name => $_ } }
    qw(primary secondary kA kB) ]);
my %url = map { $_ => $mock->member_url($_) } $mock->members;
$url{dead} = 'http://127.0.0.1:' . free_port();    # nothing listens there

my $gw = start_gateway(conf =>
    balancer_conf('aoai', members => [
        [ $url{primary}, lbset => 0, route => 'primary', timeout => 1, retry => 0 ],
        [ $url{secondary}, lbset => 1, route => 'secondary' ] ])
  . balancer_conf('refused', members => [
        [ $url{dead}, lbset => 0, route => 'dead' ],
        [ $url{secondary}, lbset => 1, route => 'secondary' ] ])
  . balancer_conf('keys', members => [
        [ $url{kA}, lbset => 0, route => 'kA' ],
        [ $url{kB}, lbset => 1, route => 'kB' ] ],
        inside => [ 'AOAIFailoverOn 401 429 500 502 503 504 connection-error timeout' ])
  . balancer_conf('strict', members => [
        [ $url{primary}, lbset => 0, route => 'primary' ],
        [ $url{secondary}, lbset => 1, route => 'secondary' ] ],
        inside => [ 'AOAIFailoverOn 429' ])
  . <<"EOF");
ProxyPass /refused/openai balancer://refused/openai
ProxyPass /keys/openai balancer://keys/openai
ProxyPass /strict/openai balancer://strict/openai
<Location /small>
    AOAIMaxBody 64K
</Location>
ProxyPass /small/openai balancer://aoai/openai
ProxyPass /openai balancer://aoai/openai
EOF

sub last_hash { $mock->stats($_[0])->{body_sha256}[-1] // '' }
sub requests  { $mock->stats($_[0])->{requests} }
my $n = 0;
sub random_body {
    my ($size) = @_;
    my $filler = join '', map { chr(65 + int rand 26) } 1 .. $size;
    return chat_body(content => "call " . ++$n . " $filler");
}

# Answers that fail over, and the body that arrives at the next member.
for my $status (429, 500, 502, 503, 504) {
    $mock->control('primary', { force_status => $status, force_count => 1,
                                retry_after_ms => 100 });
    my $body = random_body(100_000);
    my $res = chat($gw, body => $body);
    is($res->{status}, 200, "$status from the primary: the client gets 200");
    is(served_by($res), 'secondary', "$status: served by the secondary");
    is(last_hash('primary'), sha256_hex($body), "$status: the primary got the client's bytes");
    is(last_hash('secondary'), sha256_hex($body), "$status: the secondary got the same bytes");
    sleep 0.2 if $status == 429;    # let the 100 ms window pass
}

# A large chunked body, replayed with a Content-Length of its true size.
{
    $mock->control('primary', { force_status => 503, force_count => 1 });
    my $body = random_body(1_000_000);
    my $sock = raw_connect($gw);
    my $res = raw_request($sock, body => $body, chunked => 1);
    is($res->{status}, 200, 'chunked 1 MB body: 200 after failover');
    is(last_hash('secondary'), sha256_hex($body), 'chunked 1 MB body arrives intact at the next member');
}

# Expect: 100-continue: the gateway asks for the body once, before any
# member is called, and replays it.
{
    $mock->control('primary', { force_status => 503, force_count => 1 });
    my $body = random_body(50_000);
    my $sock = raw_connect($gw);
    print $sock "POST $CHAT_PATH HTTP/1.1\r\nHost: 127.0.0.1\r\n"
              . "Content-Type: application/json\r\nExpect: 100-continue\r\n"
              . "Content-Length: " . length($body) . "\r\n\r\n";
    my $interim = do { local $/ = "\r\n"; my $line = <$sock>; scalar <$sock>; $line };
    like($interim, qr{^HTTP/1\.1 100}, 'Expect: 100-continue: the client is asked for its body');
    print $sock $body;
    my $res = AOAITest::read_response($sock);
    is($res->{status}, 200, '100-continue body: 200 after failover');
    is(last_hash('secondary'), sha256_hex($body), '100-continue body arrives intact at the next member');
}

# Failures without an answer.
{
    $mock->control('primary', { fault => 'reset', fault_count => 1 });
    my $body = random_body(2000);
    my $res = chat($gw, body => $body);
    is($res->{status}, 200, 'connection reset by the primary: 200');
    is(served_by($res), 'secondary', 'reset: served by the secondary');
    is(last_hash('secondary'), sha256_hex($body), 'reset: the secondary got the body');
    is($mock->stats('primary')->{faults}, 1, 'the primary really reset the connection');

    my $sock = raw_connect($gw);    # a keep-alive client connection: a reset
    raw_request($sock);             # must not be answered by dropping it
    $mock->control('primary', { fault => 'reset', fault_count => 1 });
    $res = raw_request($sock, body => $body);
    is($res->{status}, 200, 'reset on a reused client connection: 200');
    is(served_by($res), 'secondary', 'and served by the secondary');

    $res = chat($gw, path => "/refused$CHAT_PATH", body => $body);
    is($res->{status}, 200, 'connection refused: 200');
    is(served_by($res), 'secondary', 'refused: served by the secondary');

    $mock->control('primary', { fault => 'hang', fault_count => 1, hang_ms => 2500 });
    $body = random_body(3000);
    $res = chat($gw, body => $body);
    is($res->{status}, 200, 'primary past its timeout: 200');
    is(served_by($res), 'secondary', 'timeout: served by the secondary');
    is(last_hash('secondary'), sha256_hex($body), 'timeout: the secondary got the body');
    sleep 1.6;    # the hung primary finishes its sleep
}

# 401 fails over only where the admin asked for it (the seed's policy does).
{
    $mock->control('kA', { api_key => 'only-kA-knows' });
    my $res = chat($gw, path => "/keys$CHAT_PATH");
    is($res->{status}, 200, 'AOAIFailoverOn 401: a 401 fails over');
    is(served_by($res), 'kB', '401: served by the next member');
}

# Failures that are not in the list go to the client untouched.
{
    $mock->control('primary', { force_status => 503, force_count => 1 });
    my $before = requests('secondary');
    my $res = chat($gw, path => "/strict$CHAT_PATH");
    is($res->{status}, 503, 'AOAIFailoverOn 429 only: the 503 goes to the client');
    is($res->{json}{error}{code}, '503', 'with the member\'s own body');
    is(requests('secondary'), $before, 'and the secondary was not called');

    my $res400 = chat($gw, body => '{"messages": "not a list"');
    is($res400->{status}, 400, 'a client error from the member is passed through');
    is($res400->{json}{error}{code}, 'BadRequest', 'with Azure\'s error body');
}

# A body over AOAIMaxBody: 413 in Azure's shape, and no member is called.
{
    my %before = map { $_ => requests($_) } qw(primary secondary);
    my $res = chat($gw, path => "/small$CHAT_PATH", body => random_body(100_000));
    is($res->{status}, 413, 'a body over AOAIMaxBody gets 413');
    is($res->{json}{error}{code}, '413', 'with an Azure-shaped JSON error');
    like($res->{json}{error}{message}, qr/65536 bytes/, 'naming the limit');
    is(requests('primary'), $before{primary}, 'the primary was not called');
    is(requests('secondary'), $before{secondary}, 'the secondary was not called');

    my $sock = raw_connect($gw);
    $res = raw_request($sock, path => "/small$CHAT_PATH",
                       body => random_body(100_000), chunked => 1);
    is($res->{status}, 413, 'a chunked body over AOAIMaxBody gets 413 too');
    is(requests('primary'), $before{primary}, 'still no member called');
}

unlike($gw->error_log, qr/exit signal|AH00052/, 'no child crashed');
$gw->stop;
$mock->stop;
done_testing();
