# Behaviour 7: a 200 text/event-stream answer ("stream": true) passes
# through chunk by chunk, failover happens before the stream starts and
# never after its first byte went to the client.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use AOAITest;

my $mock = start_mock(members => [ { name => 'primary', stream => '5 400' },
                                   { name => 'secondary', stream => '5 50' } ]);
my %url = map { $_ => $mock->member_url($_) } qw(primary secondary);

my $gw = start_gateway(conf =>
    balancer_conf('aoai', members => [
        [ $url{primary}, lbset => 0, route => 'primary' ],
        [ $url{secondary}, lbset => 1, route => 'secondary' ] ])
  . "ProxyPass /openai balancer://aoai/openai\n");

sub start_stream {
    my $sock = raw_connect($gw);
    my $body = chat_body(stream => 1);
    print $sock "POST $CHAT_PATH HTTP/1.1\r\nHost: 127.0.0.1\r\n"
              . "Content-Type: application/json\r\nConnection: close\r\n"
              . "Content-Length: " . length($body) . "\r\n\r\n$body";
    local $/ = "\r\n";
    my %headers;
    my $status = <$sock>;
    while (my $line = <$sock>) {
        last if $line eq "\r\n";
        $line =~ s/\r\n$//;
        my ($k, $v) = split /:\s*/, $line, 2;
        $headers{ lc $k } = $v;
    }
    return ($sock, $status, \%headers);
}

sub next_event {
    my ($sock) = @_;
    local $/ = "\n";
    while (defined(my $line = <$sock>)) {
        return $1 if $line =~ /^data: (.*)$/;
    }
    return undef;
}

my ($sock, $status, $headers) = start_stream();
like($status, qr/^HTTP\/1\.1 200/, 'stream: 200');
like($headers->{'content-type'}, qr{^text/event-stream}, 'as text/event-stream');
is($headers->{'x-aoai-backend'}, 'primary', 'from the priority-0 member');
my $first = next_event($sock);
like($first, qr/chat\.completion\.chunk/, 'the first event arrived');
is($mock->stats('primary')->{streams_in_progress}, 1,
   'while the member is still sending the rest: nothing was buffered');
my @events = ($first);
while (defined(my $event = next_event($sock))) {
    push @events, $event;
    last if $event eq '[DONE]';
}
is(scalar @events, 6, 'five chunks and [DONE] arrive');
is($events[-1], '[DONE]', 'ending with data: [DONE]');
close $sock;

# Failover before the stream starts.
$mock->control('primary', { force_status => 429, force_count => 1, retry_after_ms => 300 });
($sock, $status, $headers) = start_stream();
like($status, qr/^HTTP\/1\.1 200/, '429 then stream: the client gets a 200 stream');
is($headers->{'x-aoai-backend'}, 'secondary', 'from the next member');
my $count = 0;
while (defined(my $event = next_event($sock))) { $count++; last if $event eq '[DONE]' }
is($count, 6, 'the whole stream');
close $sock;
select(undef, undef, undef, 0.4);

# A member that dies mid-stream: the client's stream ends, nothing is retried.
my $secondary_before = $mock->stats('secondary')->{requests};
$mock->control('primary', { fault => 'stall_stream', fault_count => 1 });
($sock, $status, $headers) = start_stream();
like($status, qr/^HTTP\/1\.1 200/, 'stream that breaks: it had started with 200');
my @got;
while (defined(my $event = next_event($sock))) { push @got, $event }
ok(@got >= 1 && @got < 6, 'the client saw the part that was sent (' . scalar(@got) . ' events)');
ok(!grep({ $_ eq '[DONE]' } @got), 'and no [DONE]: it can tell the stream broke');
is($mock->stats('secondary')->{requests}, $secondary_before,
   'no failover after the first byte: the secondary was not called');
close $sock;

unlike($gw->error_log, qr/exit signal|AH00052/, 'no child crashed');
$gw->stop;
$mock->stop;
done_testing();
