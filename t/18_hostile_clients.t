# Issue 6: hostile clients get a clear 4xx, no member is called for them
# (or, for a path, nothing outside /openai is reached), and nothing of
# their input leaks into what the gateway sends back.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Socket::INET;
use Time::HiRes qw(time sleep);
use AOAITest;

my $mock = start_mock(members => [ { name => 'farm1' }, { name => 'farm0' } ]);
my %url = map { $_ => $mock->member_url($_) } qw(farm1 farm0);
# A short read timeout, so the slow client is cut off quickly.
my $gw = start_gateway(conf => "Timeout 2\n"
  . balancer_conf('aoai', members => [
        [ $url{farm1}, lbset => 0, route => 'farm1' ],
        [ $url{farm0}, lbset => 1, route => 'farm0' ] ])
  . "ProxyPass /openai-load-balancing/openai balancer://aoai/openai\n");
sub member_calls { $mock->stats('farm1')->{requests} + $mock->stats('farm0')->{requests} }
sub raw {
    my ($text, %o) = @_;
    my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $gw->port, Timeout => 10) or die;
    print $sock $text;
    sleep $o{stall} if $o{stall};
    shutdown($sock, 1) if $o{half_close};
    local $/ = "\r\n";
    my $status = <$sock> // '';
    my %headers;
    while (my $line = <$sock>) {
        last if $line eq "\r\n";
        $line =~ s/\r\n$//;
        my ($k, $v) = split /:\s*/, $line, 2;
        $headers{ lc $k } = $v;
    }
    my $body = do { local $/; <$sock> } // '';
    return ($status, \%headers, $body);
}
my $path = "/openai-load-balancing$CHAT_PATH";
my $body = chat_body();

my $before = member_calls();
my ($status, $headers, $content) = raw("POST $path HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    . "Content-Length: " . (length($body) + 500) . "\r\n\r\n$body", half_close => 1);
like($status, qr/^HTTP\/1\.1 400/, 'a body shorter than its Content-Length: 400');
like($content, qr/"code":"400"/, "in Azure's error shape");
is(member_calls(), $before, 'and no member was called');

my $t0 = time;
($status) = raw("POST $path HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    . "Content-Length: " . length($body) . "\r\n\r\n" . substr($body, 0, 20), stall => 4);
my $waited = time - $t0;
like($status, qr/^HTTP\/1\.1 408|^$/, 'a client that stops sending its body is cut off (408 or closed)');
is(member_calls(), $before, 'no member was called, so none was held open');

($status, $headers, $content) = raw("POST $path HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    . "Content-Length: 10\r\nConnection: close\r\n\r\n$body");
like($status, qr/^HTTP\/1\.1 400/, 'a body longer than its Content-Length: the 10 announced bytes are not a chat request: 400');
is($mock->stats('farm1')->{body_sha256}[-1], sha256_hex(substr($body, 0, 10)),
   'the member got exactly the 10 announced bytes, nothing of the rest');

$before = member_calls();
($status) = raw("POST /openai-load-balancing/openai/deployments/x/chat/completions HTTP/1.1\r\nHost: x\r\n"
    . "api-key: abc\x01def\r\nContent-Length: 2\r\n\r\n{}");
like($status, qr/^HTTP\/1\.1 400/, 'a control character in a header: 400');
is(member_calls(), $before, 'no member called');

for my $traversal ('/openai-load-balancing/openai/deployments/../../../etc/passwd',
                   '/openai-load-balancing/openai/deployments/%2e%2e/%2e%2e/admin/chat/completions',
                   '/openai-load-balancing/openai/deployments/..%2f..%2fadmin/chat/completions') {
    my $res = chat($gw, path => $traversal);
    ok($res->{status} >= 400 && $res->{status} < 500, "traversal $traversal: $res->{status}");
    like($mock->stats('farm1')->{last_path} || '/openai/', qr{^/openai/}, '  nothing outside /openai reached a member');
}

# What the gateway echoes is its own: a member's bogus Retry-After never
# reaches the client as it came.
$mock->control($_, { force_status => 429, retry_after_form => 'garbage' }) for qw(farm1 farm0);
my $res = chat($gw, path => $path);
is($res->{status}, 429, 'members sending garbage Retry-After: 429');
like($res->{headers}{'retry-after'}, qr/^\d+$/, 'with a Retry-After of digits only, computed by the gateway');
like($res->{headers}{'retry-after-ms'}, qr/^\d+$/, 'and retry-after-ms too');

unlike($gw->error_log, qr/exit signal|AH00052/, 'no child crashed');
$gw->stop;
$mock->stop;
done_testing();
