# Issue 16: failures the gateway must never hide.
#   1  a member whose bearer token file the children cannot use is a failed
#      attempt: the call goes on to the next member, and with none left the
#      client gets the module's 429/503 JSON, never an empty 200; the file
#      is named once per retry interval, never the token; no request is
#      counted on the member; `apachectl -t` names a token file that is
#      missing, empty, or unreadable by User;
#   2  with subscription keys checked, a caller's Authorization never
#      reaches a member;
#   3  caller keys in the query (api-key, subscription-key, any case or
#      escaping) reach neither a member nor the access log, accepted or
#      refused; api-key in the query is a key, as Azure takes it;
#   4  deployment names and the /deployments/ segment match in any case,
#      and a member is only ever sent the name it declared;
#   5  an aoai balancer of the main server used from a <VirtualHost> stays
#      an aoai balancer, with the same windows;
#   7  every member answering a failover status other than 429/5xx: the
#      client gets the last member's own answer.
# (6, 8 and 9, which need load, HTTP/2, redis and TLS: t/28_failures_load.t)
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use File::Temp qw(tempdir);
use HTTP::Tiny;
use AOAITest;

my $secrets = tempdir('aoai-failures-XXXXXX', TMPDIR => 1, CLEANUP => 1);
chmod 0755, $secrets;
sub write_file {
    my ($path, $text, $mode) = @_;
    open my $fh, '>', $path or die "$path: $!";
    print $fh $text;
    close $fh;
    chmod $mode, $path;
}

my %client_key = (team_a => 'sk-fail-team-a-0a1b2c3d', team_b => 'sk-fail-team-b-4e5f6a7b');
my $keyfile = "$secrets/subscription-keys";
write_file($keyfile, join('', map { `printf '%s' '$client_key{$_}' | $TOP/scripts/aoai-keyhash $_` }
                                  sort keys %client_key), 0644);
my $token = 'eyJ0eXAiOiJKV1QifQ.entra-token-for-failures';
my $token_file = "$secrets/entra.token";
write_file($token_file, "$token\n", 0644);

my @members = qw(busy entra open east west farm1 farm0);
my $mock = start_mock(members => [ map { { name => $_, ($_ eq 'entra' ? (bearer => $token) : ()) } } @members ]);
my %url = map { $_ => $mock->member_url($_) } @members;
my $vhost_port = free_port();

my $entra_credential = "AOAIMemberCredential entra bearer file:$token_file";
my $gw = start_gateway(conf =>
    balancer_conf('solo', members => [ [ $url{entra}, lbset => 0, route => 'entra' ] ],
        inside => [ $entra_credential ])
  . balancer_conf('pair', members => [
        [ $url{busy}, lbset => 0, route => 'busy' ],
        [ $url{entra}, lbset => 1, route => 'entra' ] ],
        inside => [ $entra_credential ])
  . balancer_conf('fallback', members => [
        [ $url{entra}, lbset => 0, route => 'entra' ],
        [ $url{open}, lbset => 1, route => 'open' ] ],
        inside => [ $entra_credential ])
  . balancer_conf('keyed', members => [ [ $url{open}, lbset => 0, route => 'open' ] ])
  . balancer_conf('named', members => [
        [ $url{east}, lbset => 0, route => 'east' ],
        [ $url{west}, lbset => 1, route => 'west' ] ],
        inside => [ 'AOAIDeployment east gpt-35-turbo', 'AOAIDeployment west gpt-4o',
                    'AOAIDeployment west gpt-35-turbo gpt35t-0125' ])
  . balancer_conf('aoai', members => [
        [ $url{farm1}, lbset => 0, route => 'farm1' ],
        [ $url{farm0}, lbset => 1, route => 'farm0' ] ])
  . <<"EOF");
<Location /keyed>
    AOAISubscriptionKeyFile $keyfile
</Location>
<Location /all404>
    AOAIFailoverOn 404 429 500 502 503 504 connection-error timeout
</Location>
<Location /aoai-status>
    SetHandler aoai-balancer-status
</Location>
ProxyPass /aoai-status !
ProxyPass /solo/openai balancer://solo/openai
ProxyPass /pair/openai balancer://pair/openai
ProxyPass /fallback/openai balancer://fallback/openai
ProxyPass /keyed/openai balancer://keyed/openai
ProxyPass /named/openai balancer://named/openai
ProxyPass /all404/openai balancer://aoai/openai
ProxyPass /openai balancer://aoai/openai
Listen 127.0.0.1:$vhost_port
<VirtualHost 127.0.0.1:$vhost_port>
    ProxyPass /openai balancer://aoai/openai
</VirtualHost>
EOF

# The access log record of each call made here: the POST lines, in order
# (the status page's GETs are logged too).
my $logged = 0;
sub logged_call {
    my (%o) = @_;
    my $res = chat($gw, %o);
    my $want = ++$logged;
    my @posts;
    eval { wait_until("$want POST lines in the access log", 10, sub {
        @posts = grep { /"POST / } $gw->access_log_lines;
        @posts >= $want;
    }) };
    my $line = $posts[$want - 1] // '';
    $res->{log} = $line =~ /" (\d+) pid=\d+ backend=(\S+) attempts=(\S+) skipped=\S+ key=(\S+)/
        ? { status => $1, backend => $2, attempts => $3, key => $4 } : {};
    return $res;
}

# --- 1. A token file the children cannot use ----------------------------
subtest 'unusable member credential' => sub {
    # Readable at start-up (apachectl -t would refuse it otherwise), then
    # taken from the children (User nobody), as a refresher gone wrong.
    chmod 0600, $token_file;
    my $res = logged_call(path => "/solo$CHAT_PATH");
    is($res->{status}, 503, 'the only member cannot be called: 503');
    is($res->{json}{error}{code}, '503', "  in Azure's JSON error shape");
    ok(length $res->{content} > 20, '  with a body');
    ok(!defined $res->{headers}{'x-aoai-backend'}, '  no member named as having served');
    is($res->{log}{status}, 503, '  the access log says 503, what the client got');

    $res = logged_call(path => "/fallback$CHAT_PATH");
    is($res->{status}, 200, 'with a next member: 200');
    is(served_by($res), 'open', '  from the next member');
    is($res->{log}{attempts}, 2, '  after two attempts');

    $mock->control('busy', { force_status => 429, force_count => 1, retry_after_ms => 4000 });
    $res = logged_call(path => "/pair$CHAT_PATH");
    is($res->{status}, 429, 'first member 429, next member\'s credential unusable: 429');
    is($res->{json}{error}{code}, '429', "  in Azure's JSON error shape");
    like($res->{headers}{'retry-after'} // '', qr/^[1-4]$/, '  with Retry-After of the window');
    is($res->{log}{status}, 429, '  the access log says 429');

    write_file($token_file, '', 0644);    # readable, but empty
    $res = logged_call(path => "/solo$CHAT_PATH");
    is($res->{status}, 503, 'an empty token file: 503 too');

    is($mock->stats('entra')->{requests}, 0, 'the member was never sent a call without its credential');
    is(member_status($gw, 'solo', 'entra')->{requests}, 0, '  and its requests counter says so');
    ok(member_status($gw, 'fallback', 'entra')->{failovers} >= 1, '  each such attempt is a failover from it');
    my @lines = grep { /AOAI030/ } split /\n/, $gw->error_log;
    is(scalar(grep { /balancer:\/\/solo/ } @lines), 1, 'logged once per retry interval, not per call');
    like($lines[0] // '', qr/member entra: its bearer token file \Q$token_file\E is unreadable/,
         '  naming the member and the file');
    unlike($gw->error_log, qr/\Q$token\E/, '  never the token');

    write_file($token_file, "$token\n", 0644);
    $res = logged_call(path => "/solo$CHAT_PATH");
    is($res->{status}, 200, 'the file fixed: served at once');
    is($mock->stats('entra')->{last_bearer}, 'valid', '  with the token');
};

# --- 2 and 3. No caller credential reaches a member or a log -----------
subtest 'caller credentials scrubbed' => sub {
    my $bearer = 'client-own-bearer-token-5c6d7e';
    my $res = logged_call(path => "/keyed$CHAT_PATH",
                          headers => { 'api-key' => $client_key{team_a},
                                       Authorization => "Bearer $bearer" });
    is($res->{status}, 200, 'a valid key with an Authorization header: 200');
    is($mock->stats('open')->{last_bearer}, 'absent', "the caller's bearer token did not reach the member");
    unlike($mock->stats('open')->{last_header_names}, qr/authorization|api-key/i,
           '  nor any credential header');

    my $extra = 'sk-query-extra-99aa88bb';
    $res = logged_call(path => "/keyed$CHAT_PATH&api-key=$extra",
                       headers => { 'api-key' => $client_key{team_a} });
    is($res->{status}, 200, 'a valid header key plus ?api-key=: 200');
    is($mock->stats('open')->{last_path}, $CHAT_PATH, '  the member got the path without the query key');

    $res = logged_call(path => "/keyed$CHAT_PATH&api-key=$client_key{team_b}");
    is($res->{status}, 200, 'a key only in ?api-key=: accepted, as Azure accepts it');
    is($res->{log}{key}, 'team_b', '  as team_b');
    is($mock->stats('open')->{last_path}, $CHAT_PATH, '  and scrubbed');

    $res = logged_call(path => "/keyed$CHAT_PATH&API-Key=$client_key{team_a}&x=1");
    is($res->{status}, 200, '?API-Key= in another case: accepted');
    is($mock->stats('open')->{last_path}, "$CHAT_PATH&x=1", '  scrubbed, the other parameters kept in order');
    $res = logged_call(path => "/keyed$CHAT_PATH&subscription%2Dkey=$client_key{team_a}");
    is($res->{status}, 200, '?subscription%2Dkey=: accepted');
    is($mock->stats('open')->{last_path}, $CHAT_PATH, '  scrubbed');

    my $wrong = 'sk-wrong-query-key-deadbeef';
    $res = logged_call(path => "/keyed$CHAT_PATH&api-key=$wrong");
    is($res->{status}, 401, 'a wrong key only in ?api-key=: 401');
    my $wrong_sub = 'sk-wrong-subscription-0ff1ce';
    $res = logged_call(path => "/keyed/openai/deployments/x/chat/completions?subscription-key=$wrong_sub");
    is($res->{status}, 401, 'a wrong key in ?subscription-key= as the only parameter: 401');

    my $logs = $gw->log_text('access_log') . $gw->log_text('combined_log') . $gw->error_log;
    for my $secret (values %client_key, $extra, $wrong, $wrong_sub, $bearer) {
        unlike($logs, qr/\Q$secret\E/, 'no log line holds ' . substr($secret, 0, 10) . '...');
    }
    like($gw->log_text('combined_log'), qr{"POST /keyed/openai/deployments/x/chat/completions HTTP/1\.1" 401},
         'the refused request line is logged without its query key');
};

# --- 4. Deployment names in any case -------------------------------------
subtest 'deployment names in any case' => sub {
    my %before = map { $_ => $mock->stats($_)->{requests} } qw(east west);
    my $res = logged_call(path => '/named/openai/deployments/GPT-4o/chat/completions?api-version=2024-06-01');
    is($res->{status}, 200, 'deployments/GPT-4o: served');
    is(served_by($res), 'west', '  by the only member that declares gpt-4o');
    is($mock->stats('west')->{last_path}, '/openai/deployments/gpt-4o/chat/completions?api-version=2024-06-01',
       '  which is sent the name it declared');
    is($mock->stats('east')->{requests}, $before{east}, '  east, which does not declare it, got nothing');
    # The segment in another case is still a deployment call: east, first
    # in priority, must not be sent a deployment it does not declare.
    $res = logged_call(path => '/named/openai/Deployments/gpt-4o/chat/completions?api-version=2024-06-01');
    is(served_by($res), 'west', '/Deployments/gpt-4o: west answered');
    is($mock->stats('east')->{requests}, $before{east}, '  east still got nothing');

    $res = logged_call(path => '/named/openai/deployments/GPT-35-Turbo/chat/completions?api-version=2024-06-01');
    is(served_by($res), 'east', 'GPT-35-Turbo: east serves gpt-35-turbo');
    is($mock->stats('east')->{last_path}, '/openai/deployments/gpt-35-turbo/chat/completions?api-version=2024-06-01',
       '  under the name it declared');
    $mock->control('east', { force_status => 429, force_count => 1, retry_after_ms => 1500 });
    $res = logged_call(path => '/named/openai/deployments/GPT-35-TURBO/chat/completions?api-version=2024-06-01');
    is(served_by($res), 'west', 'on failover, west');
    is($mock->stats('west')->{last_path}, '/openai/deployments/gpt35t-0125/chat/completions?api-version=2024-06-01',
       '  under its own name for it');

    %before = map { $_ => $mock->stats($_)->{requests} } qw(east west);
    $res = logged_call(path => '/named/openai/Deployments/Ada/embeddings?api-version=2024-06-01');
    is($res->{status}, 404, 'a name nobody declares, in any case: 404');
    is($res->{json}{error}{code}, 'DeploymentNotFound', '  DeploymentNotFound');
    is_deeply({ map { $_ => $mock->stats($_)->{requests} } qw(east west) }, \%before, '  no member called');
    sleep 2;
};

# --- 5. A <VirtualHost> using the main server's balancer ----------------
subtest 'balancer used from a virtual host' => sub {
    $mock->reset('farm1', 'farm0');
    $mock->control('farm1', { force_status => 429, force_count => 1, retry_after_ms => 3000 });
    my $http = HTTP::Tiny->new(timeout => 10);
    my $res = $http->post("http://127.0.0.1:$vhost_port$CHAT_PATH",
                          { headers => { 'content-type' => 'application/json' }, content => chat_body() });
    $logged++;
    is($res->{status}, 200, 'through the virtual host, the 429 is failed over: 200');
    is(served_by($res), 'farm0', '  by the next member, named as by the module');
    like($gw->error_log, qr/AOAI007: balancer:\/\/aoai, used in virtual host \S+:$vhost_port, balances with lbmethod=aoai/,
         '  and the start-up log says the virtual host balances with aoai');
    $res = logged_call();
    is(served_by($res), 'farm0', 'the main server sees the same window');
    $res = $http->post("http://127.0.0.1:$vhost_port$CHAT_PATH",
                       { headers => { 'content-type' => 'application/json' }, content => chat_body() });
    $logged++;
    is(served_by($res), 'farm0', 'and so does the virtual host');
    is($mock->stats('farm1')->{requests}, 1, 'farm1 was called once, for its 429');
};

# --- 7. Every member answers 404 -----------------------------------------
subtest 'every member answers 404' => sub {
    sleep 3;    # farm1's window from subtest 5
    $mock->reset('farm1', 'farm0');
    $mock->control($_, { force_status => 404 }) for qw(farm1 farm0);
    my $res = logged_call(path => "/all404$CHAT_PATH");
    is($res->{status}, 404, 'AOAIFailoverOn 404, every member 404: 404');
    is($res->{headers}{'x-mock-member'}, 'farm0', "  the last member's own answer");
    is($res->{json}{error}{code}, '404', '  its JSON body');
    is($mock->stats('farm1')->{requests}, 1, '  after farm1 was tried');
    is($res->{log}{attempts}, 2, '  two attempts logged');
    $mock->reset('farm1', 'farm0');
};

$gw->stop;
$mock->stop;

# --- 1. apachectl -t checks bearer token files against User -----------
my $proxy = sub {
    my ($file) = @_;
    return balancer_conf('b', members => [ [ 'http://127.0.0.1:9', route => 'a' ] ],
                         inside => [ "AOAIMemberCredential a bearer file:$file" ]);
};
my ($ok, $out) = configtest($proxy->("$secrets/none.token"));
ok(!$ok, 'apache2 -t fails for a missing token file');
like($out, qr/AOAIMemberCredential a bearer file:\Q$secrets\E\/none\.token in balancer:\/\/b: .*none\.token is missing/,
     '  naming the directive, the file and why') or diag $out;
write_file("$secrets/empty.token", '', 0644);
($ok, $out) = configtest($proxy->("$secrets/empty.token"));
ok(!$ok, 'apache2 -t fails for an empty token file');
like($out, qr/empty\.token is empty/, '  saying it is empty') or diag $out;
write_file("$secrets/root.token", "$token\n", 0600);
($ok, $out) = configtest($proxy->("$secrets/root.token"));
SKIP: {
    skip 'the children run as root only when not started as root', 2 unless $> == 0;
    ok(!$ok, 'apache2 -t fails for a token file User cannot read');
    like($out, qr/root\.token is not readable by User nobody, as whom the children read it on every call \(owner uid 0, group gid 0, mode 0600\)/,
         '  naming the user, the owner and the mode') or diag $out;
}
my $closed = tempdir('aoai-closed-XXXXXX', TMPDIR => 1, CLEANUP => 1);
chmod 0700, $closed;
write_file("$closed/in.token", "$token\n", 0644);
($ok, $out) = configtest($proxy->("$closed/in.token"));
SKIP: {
    skip 'needs root', 2 unless $> == 0;
    ok(!$ok, 'apache2 -t fails for a token file in a directory User cannot enter');
    like($out, qr/cannot be reached by User nobody: the directory \Q$closed\E \(mode 0700\)/, '  naming the directory') or diag $out;
}
($ok, $out) = configtest($proxy->($token_file));
ok($ok, 'a readable token file passes apache2 -t') or diag $out;

done_testing();
