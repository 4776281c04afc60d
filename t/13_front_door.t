# Issue 3: the gateway's front door.  Callers present a subscription key
# (api-key, a configured header, Ocp-Apim-Subscription-Key or the
# subscription-key query parameter); each member is called with its own
# credential, never the caller's and never the previous member's; no key
# or token reaches a log or another member; the seed's API URL suffix
# maps onto every member's /openai path.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use File::Temp qw(tempdir);
use AOAITest;

my %client_key = (team_a => 'sk-team-a-0f1e2d3c4b5a', team_b => 'sk-team-b-9a8b7c6d5e4f');
my %member_key = (farm1 => 'farm1-azure-key-11111111', farm0 => 'farm0-azure-key-00000000');
my @tokens = ('eyJ0eXAiOiJKV1QiLCJ0b2tlbi12MSJ9.first', 'eyJ0eXAiOiJKV1QiLCJ0b2tlbi12MiJ9.second');

my $secrets = tempdir('aoai-secrets-XXXXXX', TMPDIR => 1, CLEANUP => 1);
chmod 0755, $secrets;
sub write_file { my ($path, $text, $mode) = @_; open my $fh, '>', $path or die; print $fh $text; close $fh; chmod $mode, $path }
my $keyfile = "$secrets/subscription-keys";
write_file($keyfile, "# label sha256\n"
    . join('', map { `printf '%s' '$client_key{$_}' | $TOP/scripts/aoai-keyhash $_` } sort keys %client_key), 0600);
like(`cat $keyfile`, qr/^team_a [0-9a-f]{64}\nteam_b [0-9a-f]{64}\n\z/m, 'aoai-keyhash writes label and digest lines');
write_file("$secrets/farm1.key", "$member_key{farm1}\n", 0600);    # root only: read by the parent
write_file("$secrets/bearer.token", "$tokens[0]\n", 0644);          # read by the children
$ENV{AOAI_TEST_FARM0_KEY} = $member_key{farm0};

my $mock = start_mock(members => [
    { name => 'farm1', api_key => $member_key{farm1} },
    { name => 'farm0', api_key => $member_key{farm0} },
    { name => 'entra', bearer => $tokens[0] },
    { name => 'open' },
]);
my %url = map { $_ => $mock->member_url($_) } qw(farm1 farm0 entra open);

my $gw = start_gateway(loglevel => 'info aoai_balancer:trace8', conf =>
    balancer_conf('aoai', members => [
        [ $url{farm1}, lbset => 0, route => 'farm1' ],
        [ $url{farm0}, lbset => 1, route => 'farm0' ] ],
        inside => [ "AOAIMemberCredential farm1 api-key file:$secrets/farm1.key",
                    'AOAIMemberCredential farm0 api-key env:AOAI_TEST_FARM0_KEY' ])
  . balancer_conf('entra', members => [
        [ $url{entra}, lbset => 0, route => 'entra' ],
        [ $url{open}, lbset => 1, route => 'open' ] ],
        inside => [ "AOAIMemberCredential entra bearer file:$secrets/bearer.token" ])
  . <<"EOF");
<Location /openai-load-balancing>
    AOAISubscriptionKeyFile $keyfile
</Location>
<Location /custom-header>
    AOAISubscriptionKeyFile $keyfile
    AOAISubscriptionKeyHeader x-gateway-key
</Location>
ProxyPass /openai-load-balancing/openai balancer://aoai/openai
ProxyPass /custom-header/openai balancer://aoai/openai
ProxyPass /entra/openai balancer://entra/openai
EOF

my $seed_path = "/openai-load-balancing$CHAT_PATH";

# Subscription keys
my $res = chat($gw, path => $seed_path);
is($res->{status}, 401, 'no subscription key: 401');
is($res->{json}{statusCode}, 401, "in API Management's shape");
like($res->{json}{message}, qr/missing subscription key/, 'saying the key is missing');
$res = chat($gw, path => $seed_path, headers => { 'api-key' => 'sk-not-a-key' });
is($res->{status}, 401, 'a wrong key: 401');
like($res->{json}{message}, qr/invalid subscription key/, 'saying the key is invalid');
is($mock->stats('farm1')->{requests}, 0, 'no member was called for refused callers');

$res = chat($gw, path => $seed_path, headers => { 'api-key' => $client_key{team_a} });
is($res->{status}, 200, 'a valid key in api-key: 200');
is($mock->stats('farm1')->{last_api_key}, 'valid', "the member got its own api-key, not the caller's");
$res = chat($gw, path => $seed_path, headers => { 'Ocp-Apim-Subscription-Key' => $client_key{team_b} });
is($res->{status}, 200, 'a valid key in Ocp-Apim-Subscription-Key: 200');
unlike($mock->stats('farm1')->{last_header_names}, qr/ocp-apim-subscription-key/i,
       'that header does not reach the member');
$res = chat($gw, path => "$seed_path&subscription-key=$client_key{team_a}");
is($res->{status}, 200, 'a valid key in the subscription-key query parameter: 200');
is($mock->stats('farm1')->{last_path}, $CHAT_PATH,
   'the member gets the path and api-version without the key');
$res = chat($gw, path => "/custom-header$CHAT_PATH", headers => { 'x-gateway-key' => $client_key{team_b} });
is($res->{status}, 200, 'AOAISubscriptionKeyHeader: the key in the configured header');
unlike($mock->stats('farm1')->{last_header_names}, qr/x-gateway-key/i, 'which does not reach the member');
my @log = access_log_records($gw, 7);
is_deeply([ map { $_->{key} } grep { $_->{status} == 200 } @log ], [qw(team_a team_b team_a team_b)],
          'the access log names the key label of each call');

# Failover: the next member gets its own credential
$mock->control('farm1', { force_status => 429, force_count => 1, retry_after_ms => 200 });
$res = chat($gw, path => $seed_path, headers => { 'api-key' => $client_key{team_a} });
is($res->{status}, 200, 'farm1 throttled: 200');
is(served_by($res), 'farm0', 'from farm0');
is($mock->stats('farm0')->{last_api_key}, 'valid', "farm0 got farm0's key, not farm1's");
select undef, undef, undef, 0.3;

# Path mapping: any deployment, any api-version, every operation
for my $op ('chat/completions', 'completions', 'embeddings') {
    my $path = "/openai/deployments/gpt35t-0125/$op?api-version=2024-10-21";
    $res = chat($gw, path => "/openai-load-balancing$path", headers => { 'api-key' => $client_key{team_a} });
    is($res->{status}, 200, "$op: 200");
    is($mock->stats('farm1')->{last_path}, $path, "$op reaches the member as $path");
}

# Bearer tokens re-read from the file a refresher rewrites
$res = chat($gw, path => "/entra$CHAT_PATH");
is(served_by($res), 'entra', 'bearer member serves');
is($mock->stats('entra')->{last_bearer}, 'valid', 'with the token from the file');
write_file("$secrets/bearer.token.new", "$tokens[1]\n", 0644);
rename "$secrets/bearer.token.new", "$secrets/bearer.token" or die;
$mock->control('entra', { bearer_token => $tokens[1] });
$res = chat($gw, path => "/entra$CHAT_PATH");
is(served_by($res), 'entra', 'after the refresher rewrote the file');
is($mock->stats('entra')->{last_bearer}, 'valid', 'the new token is used, without a restart');
$mock->control('entra', { force_status => 503, force_count => 1 });
$res = chat($gw, path => "/entra$CHAT_PATH", headers => { Authorization => 'Bearer client-own-token' });
is(served_by($res), 'open', 'failover from the bearer member');
is($mock->stats('open')->{last_bearer}, 'absent', "the next member gets neither the entra token nor the caller's");
unlink "$secrets/bearer.token";
$res = chat($gw, path => "/entra$CHAT_PATH");
is(served_by($res), 'open', 'token file gone: the call fails over instead of failing');
like($gw->error_log, qr/AOAI030: balancer:\/\/entra: member entra: its bearer token file \S+ is unreadable/, 'and the error log says why');

# Secrets never reach a log
$gw->stop;
my $logs = $gw->error_log . $gw->log_text('access_log') . $gw->log_text('combined_log');
like($gw->error_log, qr/aoai_balancer:debug/, 'the module logged at its most verbose (LogLevel aoai_balancer:trace8)');
for my $secret (values %client_key, values %member_key, @tokens) {
    unlike($logs, qr/\Q$secret\E/, 'no log holds ' . substr($secret, 0, 8) . '...');
}
$mock->stop;

# Key file errors stop apachectl -t with the file, the line and the reason
for my $case ([ "team_a 1234\n", qr/:1: the digest is not 64 hex characters/ ],
              [ "# ok\nteam_a " . ('a' x 64) . "\nteam_a " . ('b' x 64) . "\n", qr/:3: label 'team_a' is already used/ ],
              [ "team a " . ('a' x 64) . "\n", qr/:1: unexpected text after the digest|:1: the digest/ ],
              [ "team_a " . ('g' x 64) . "\n", qr/:1: the digest is not hexadecimal/ ],
              [ "# nothing\n", qr/: no keys: every call would be refused/ ]) {
    write_file("$secrets/bad-keys", $case->[0], 0600);
    my ($ok, $out) = configtest("<Location /x>\nAOAISubscriptionKeyFile $secrets/bad-keys\n</Location>\n");
    ok(!$ok, 'apache2 -t fails for a malformed key file');
    like($out, qr/AOAISubscriptionKeyFile \Q$secrets\E\/bad-keys$case->[1]/, '  naming file, line and reason') or diag $out;
}
my ($ok, $out) = configtest("<Location /x>\nAOAISubscriptionKeyFile $secrets/missing\n</Location>\n");
like($out, qr/AOAISubscriptionKeyFile .*missing: cannot be read/, 'a missing key file fails apache2 -t');
($ok, $out) = configtest("<Proxy balancer://b>\nBalancerMember http://127.0.0.1:9 route=a\n"
                         . "AOAIMemberCredential a api-key sk-inline-key\n</Proxy>\n");
like($out, qr/from file:\/path or env:NAME, never inline/, 'an inline credential is refused');
($ok, $out) = configtest("<Proxy balancer://b>\nBalancerMember http://127.0.0.1:9 route=a\n"
                         . "AOAIMemberCredential zz api-key env:HOME\n</Proxy>\n");
like($out, qr/AOAI005: AOAIMemberCredential zz: no BalancerMember of balancer:\/\/b has route=zz/,
     'a credential for an unknown route is refused');
($ok, $out) = configtest("<Proxy balancer://b>\nBalancerMember http://127.0.0.1:9 route=a\n"
                         . "AOAIMemberCredential a api-key env:AOAI_NOT_SET_ANYWHERE\n</Proxy>\n");
like($out, qr/environment variable AOAI_NOT_SET_ANYWHERE is not set/, 'an unset variable is refused');

done_testing();
