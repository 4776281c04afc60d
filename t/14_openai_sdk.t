# Issue 3, an unmodified client: the openai SDK's AzureOpenAI class (npm
# package openai, pinned in t/sdk/package.json), configured as its
# documentation says with the gateway as endpoint and a subscription key
# as api key, gets a chat.completion, a stream and an embedding back.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use File::Temp qw(tempdir);
use JSON::PP;
use AOAITest;

plan skip_all => 'node and t/sdk/node_modules are needed (t/run installs them)'
    unless `which node` && -d "$TOP/t/sdk/node_modules/openai";

my $secrets = tempdir('aoai-sdk-XXXXXX', TMPDIR => 1, CLEANUP => 1);
chmod 0755, $secrets;
my $client_key = 'sk-sdk-client-5566778899';
system("printf '%s' '$client_key' | $TOP/scripts/aoai-keyhash sdk-test > $secrets/keys") == 0 or die;
open my $fh, '>', "$secrets/farm1.key" or die;
print $fh "farm1-own-key\n";
close $fh;

my $mock = start_mock(members => [ { name => 'farm1', api_key => 'farm1-own-key', stream => '4 20' },
                                   { name => 'farm0' } ]);
my %url = map { $_ => $mock->member_url($_) } qw(farm1 farm0);
my $gw = start_gateway(conf =>
    balancer_conf('aoai', members => [
        [ $url{farm1}, lbset => 0, route => 'farm1' ],
        [ $url{farm0}, lbset => 1, route => 'farm0' ] ],
        inside => [ "AOAIMemberCredential farm1 api-key file:$secrets/farm1.key" ])
  . <<"EOF");
<Location /openai-load-balancing>
    AOAISubscriptionKeyFile $secrets/keys
</Location>
ProxyPass /openai-load-balancing/openai balancer://aoai/openai
EOF

sub sdk {
    my ($key) = @_;
    my $out = `cd $TOP/t/sdk && node client.mjs '${\ $gw->url}/openai-load-balancing' '$key' 2>&1`;
    my %by_kind;
    for my $line (split /\n/, $out) {
        my $record = eval { decode_json($line) } or next;
        $by_kind{ $record->{kind} } = $record;
    }
    diag $out unless %by_kind;
    return \%by_kind;
}

my $r = sdk($client_key);
is($r->{chat}{object}, 'chat.completion', 'AzureOpenAI chat.completions.create: a chat.completion');
is($r->{chat}{content}, 'Hello from farm1', 'from the priority-0 member');
is($r->{chat}{backend}, 'farm1', 'and the SDK can read x-aoai-backend');
ok($r->{chat}{total_tokens} > 0, 'with usage');
is($r->{stream}{chunks}, 4, 'stream: true through the SDK: every chunk');
like($r->{stream}{text}, qr/^farm1 1 2 3$/, 'in order');
is($r->{embeddings}{dimensions}, 3, 'embeddings through the SDK');
is($mock->stats('farm1')->{last_api_key}, 'valid', "the member got its own key, not the SDK's");

$mock->control('farm1', { force_status => 429, retry_after_ms => 10000 });
$r = sdk($client_key);
is($r->{chat}{content}, 'Hello from farm0', 'farm1 throttled: the SDK call is served by farm0');

$r = sdk('sk-wrong');
is($r->{chat}{error}, 401, 'a wrong subscription key: the SDK raises a 401');

$gw->stop;
$mock->stop;
done_testing();
