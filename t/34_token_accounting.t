# Issue 23: token accounting a client cannot dodge.  A key with
# AOAIKeyTokensPerMinute N gets no more than N plus one call's worth,
# whichever way its calls go:
#   - streamed without stream_options.include_usage and without
#     max_tokens: the completion is counted from the stream's deltas (the
#     client gets the stream as the member sent it: no usage chunk added);
#   - Accept-Encoding: gzip to a member that compresses: the answer is
#     inflated as it passes (the client still gets gzip);
#   - a 2.7 MB answer (logprobs, top_logprobs 20): read as it passes;
#   - an encoding the gateway cannot undo (br): the call is charged its
#     prompt and max_tokens, or AOAIKeyTokensUnread without max_tokens,
#     never its prompt alone;
# the access log says where each figure came from (AOAI_USAGE) and what
# the key was charged (AOAI_KEY_TOKENS), and the member's counters get
# the counted figures too.  Each member answers 2000 completion tokens.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use AOAITest;
use File::Temp qw(tempdir);
use IO::Uncompress::Gunzip qw(gunzip $GunzipError);
use JSON::PP;

my $JSON = JSON::PP->new->canonical;
my $N = 5000;                 # the quota of every key, tokens a minute
my $COMPLETION = 2000;        # what every member answers
my $UNREAD = 3000;            # AOAIKeyTokensUnread

# Subscription keys, as scripts/aoai-keyhash writes them.
my @teams = qw(stream gzip big unread unread_max usage);
my %key = map { $_ => "sk-$_-" . join('', map { ('a' .. 'z')[rand 26] } 1 .. 16) } @teams;
my $secrets = tempdir('aoai-secrets-XXXXXX', TMPDIR => 1, CLEANUP => 1);
chmod 0755, $secrets;
my $keyfile = write_key_file("$secrets/subscription-keys",
                             map { $_ => $key{$_} } @teams);

my %long = (completion_tokens => $COMPLETION);
my $mock = start_mock(members => [
    { name => 'teller', stream => "$COMPLETION 0", set => \%long },
    { name => 'zipper', compress => 'on', set => \%long },
    { name => 'bulky', set => \%long },
]);
my %url = map { $_ => $mock->member_url($_) } qw(teller zipper bulky);

# A member behind mod_brotli: its answers are in an encoding the gateway
# does not inflate, for a client that accepts br.
my $br_port = free_port();
my $brotli = AOAITest::Mock->start(
    name => 'mock-br', ports => [$br_port], mpm => 'single', sanitize => 0,
    loglevel => 'warn',
    modules => AOAITest::load_modules('authz_core', 'brotli')
             . "LoadModule aoai_mock_module $TOP/t/mock/.libs/mod_aoai_mock.so\n",
    conf => "<VirtualHost 127.0.0.1:$br_port>\n    SetHandler aoai-mock\n"
          . "    AOAIMockMember brotli\n    AOAIMockSet completion_tokens $COMPLETION\n"
          . "    SetOutputFilter BROTLI_COMPRESS\n</VirtualHost>\n");
$url{brotli} = "http://127.0.0.1:" . $brotli->port;

my $conf = '';
for my $member (qw(teller zipper bulky brotli)) {
    $conf .= balancer_conf($member, members => [ [ $url{$member}, route => $member ] ]);
}
$conf .= <<"EOF";
LogFormat "%>s key=%{AOAI_KEY_LABEL}e usage=%{AOAI_USAGE}e charged=%{AOAI_KEY_TOKENS}e tokens=%{AOAI_PROMPT_TOKENS}e/%{AOAI_COMPLETION_TOKENS}e/%{AOAI_TOTAL_TOKENS}e" tokens
CustomLog tokens_log tokens "expr=%{REQUEST_URI} =~ m#^/m/#"
<Location /m>
    AOAISubscriptionKeyFile $keyfile
    AOAIKeyTokensPerMinute $N
    AOAIKeyTokensUnread $UNREAD
</Location>
ProxyPass /aoai-status !
<Location /aoai-status>
    SetHandler aoai-balancer-status
    Require ip 127.0.0.1
</Location>
EOF
$conf .= "ProxyPass /m/$_/openai balancer://$_/openai\n" for qw(teller zipper bulky brotli);
my $gw = start_gateway(conf => $conf);

# One call, then its line of tokens_log (written after the key's charge
# is settled, so the next call sees it).
my $logged = 0;
sub call {
    my ($member, $team, %o) = @_;
    my $body = $JSON->encode({
        messages => [ { role => 'user', content => 'Tell me a long story.' } ],
        ($o{stream} ? (stream => JSON::PP::true) : ()),
        ($o{include_usage} ? (stream_options => { include_usage => JSON::PP::true }) : ()),
        ($o{max_tokens} ? (max_tokens => $o{max_tokens}) : ()),
        ($o{logprobs} ? (logprobs => JSON::PP::true, top_logprobs => 20) : ()),
    });
    my $res = chat($gw, path => "/m/$member$CHAT_PATH", body => $body, timeout => 60,
                   headers => { 'api-key' => $key{$team}, %{ $o{headers} || {} } });
    $res->{prompt} = int(length($body) / 4) + 1;   # the mock's and the estimate's
    $logged++;
    my @lines;
    AOAITest::wait_until("tokens_log line $logged", 10, sub {
        @lines = split /\n/, $gw->log_text('tokens_log');
        @lines >= $logged;
    });
    my ($status, $label, $usage, $charged, $p, $c, $t) = $lines[$logged - 1]
        =~ /^(\d+) key=(\S+) usage=(\S+) charged=(\S+) tokens=(\S+)\/(\S+)\/(\S+)$/
        or die "tokens_log: $lines[$logged - 1]";
    $res->{log} = { status => $status, key => $label, usage => $usage,
                    charged => $charged, tokens => "$p/$c/$t" };
    return $res;
}

# Calls until the key is refused (at most 12): each way must be refused,
# and what was served (at the member's own figures) must stay within N
# and one call's worth.  Returns the calls served.
sub drain {
    my ($way, $member, $team, $check, %o) = @_;
    my ($served, $cost, $refused, $one) = (0, 0, 0, 0);
    for my $n (1 .. 12) {
        my $res = call($member, $team, %o);
        if ($res->{status} == 429) {
            $refused = 1;
            is($res->{log}{usage}, '-', "$way: the refused call reached no member");
            last;
        }
        is($res->{status}, 200, "$way: call $n served") or last;
        $served++;
        $one = $res->{prompt} + $COMPLETION;
        $cost += $one;
        $check->($res) if $n == 1;
    }
    ok($refused, "$way: the key is refused before 12 calls");
    cmp_ok($cost, '<=', $N + $one,
           "$way: $served calls served, $cost tokens: within $N and one call ($one)");
    return $served;
}

# The stream a client gets, without what differs from call to call.
sub same_shape {
    my ($text) = @_;
    $text =~ s/"(id|created)":("[^"]*"|\d+)/"$1":0/g;
    return $text;
}

# ---------------------------------------------------------------------
# 1. A stream without include_usage and without max_tokens.
my $served = drain('a stream without usage', 'teller', 'stream', sub {
    my ($res) = @_;
    my @data = $res->{content} =~ /^data: (.*)$/mg;
    is($data[-1], '[DONE]', 'stream: it ends in [DONE]');
    is(scalar(grep { /"content"/ } @data), $COMPLETION, "stream: $COMPLETION deltas");
    ok(!grep({ /"usage"/ } @data), 'stream: no usage chunk the client did not ask for');
    my $direct = HTTP::Tiny->new(timeout => 60)->request('POST',
        "$url{teller}$CHAT_PATH", { headers => { 'content-type' => 'application/json' },
        content => $JSON->encode({ messages => [ { role => 'user',
            content => 'Tell me a long story.' } ], stream => JSON::PP::true }) });
    is(same_shape($res->{content}), same_shape($direct->{content}),
       'stream: the client gets what the member sends (ids and times aside)');
    is($res->{log}{usage}, 'counted', 'stream: AOAI_USAGE=counted');
    is($res->{log}{tokens}, join('/', $res->{prompt}, $COMPLETION, $res->{prompt} + $COMPLETION),
       'stream: the log has the prompt estimated and the completion counted');
    is($res->{log}{charged}, $res->{prompt} + $COMPLETION,
       'stream: the key is charged that figure (AOAI_KEY_TOKENS)');
}, stream => 1);
is($served, 3, 'a stream without usage: 3 calls of 2000-odd tokens fit in 5000, not a 4th');

my $status = get_json($gw->url . '/aoai-status');
my ($bal) = grep { $_->{name} eq 'balancer://teller' } @{ $status->{balancers} || [] };
my $counted = $JSON->encode($bal->{members}[0] // {});
like($counted, qr/"completion(?:_tokens)?"\s*:\s*@{[ 3 * $COMPLETION ]}\b/,
     "the member's counters have the counted completion (3 x $COMPLETION)");

# With include_usage, the member's own usage, and the client gets it.
my $res = call('teller', 'usage', stream => 1, include_usage => 1);
my @usage_chunks = grep { /"usage":\{/ } $res->{content} =~ /^data: (.*)$/mg;
is(scalar @usage_chunks, 1, 'include_usage: the client gets its usage chunk');
is($res->{log}{usage}, 'answer', 'include_usage: AOAI_USAGE=answer');
is($res->{log}{tokens}, join('/', $res->{prompt}, $COMPLETION, $res->{prompt} + $COMPLETION),
   "include_usage: the member's figures");

# ---------------------------------------------------------------------
# 2. Accept-Encoding: gzip, and a member that compresses.
$served = drain('gzip', 'zipper', 'gzip', sub {
    my ($res) = @_;
    is($res->{headers}{'content-encoding'}, 'gzip', 'gzip: the client gets gzip, as it asked');
    my $plain;
    ok(gunzip(\$res->{content} => \$plain), 'gzip: the client can inflate it')
        or diag $GunzipError;
    my $answer = eval { $JSON->decode($plain) } || {};
    is($answer->{usage}{completion_tokens}, $COMPLETION, 'gzip: its usage is there');
    is($res->{log}{usage}, 'answer', 'gzip: AOAI_USAGE=answer');
    is($res->{log}{tokens}, join('/', @{ $answer->{usage} }{qw(prompt_tokens
       completion_tokens total_tokens)}), "gzip: the log has the member's figures");
}, headers => { 'Accept-Encoding' => 'gzip' });
is($served, 3, 'gzip: 3 calls fit, not a 4th');

# ---------------------------------------------------------------------
# 3. A 2.7 MB answer.
$served = drain('a large answer', 'bulky', 'big', sub {
    my ($res) = @_;
    cmp_ok(length $res->{content}, '>', 2 * 1024 * 1024,
           'large: the answer is over 2 MiB, twice the old bound (' . length($res->{content}) . ' bytes)');
    is($res->{json}{usage}{completion_tokens}, $COMPLETION, 'large: the client has it whole');
    is($res->{log}{usage}, 'answer', 'large: AOAI_USAGE=answer');
    is($res->{log}{charged}, $res->{json}{usage}{total_tokens},
       "large: the key is charged the member's total");
}, logprobs => 1);
is($served, 3, 'a large answer: 3 calls fit, not a 4th');

# ---------------------------------------------------------------------
# 4. No figure, no free pass: an encoding the gateway cannot undo.
$served = drain('unreadable, no max_tokens', 'brotli', 'unread', sub {
    my ($res) = @_;
    is($res->{headers}{'content-encoding'}, 'br', 'br: the client gets br, as it asked');
    is($res->{log}{usage}, 'unread', 'br: AOAI_USAGE=unread');
    is($res->{log}{tokens}, '-/-/-', 'br: no token figures in the log');
    is($res->{log}{charged}, $res->{prompt} + $UNREAD,
       "br: charged its prompt and AOAIKeyTokensUnread ($UNREAD), not its prompt alone");
}, headers => { 'Accept-Encoding' => 'br' });
is($served, 2, 'unreadable: 2 calls charged 3000-odd fit, not a 3rd');

$served = drain('unreadable, max_tokens 2400', 'brotli', 'unread_max', sub {
    my ($res) = @_;
    is($res->{log}{charged}, $res->{prompt} + 2400, 'br: charged its prompt and max_tokens');
}, headers => { 'Accept-Encoding' => 'br' }, max_tokens => 2400);
is($served, 2, 'unreadable with max_tokens: 2 calls fit, not a 3rd');

like($gw->error_log, qr/AOAI200: no token usage could be read from the answer \(application\/json[^,]*, Content-Encoding br\)/,
     'an unread answer is logged at info (AOAI200), with its type and encoding');

# ---------------------------------------------------------------------
# AOAIKeyTokensUnread is checked by apachectl -t.
for my $bad ('0', '-5', 'lots', '99999999999999') {
    my ($ok, $out) = configtest("<Location /x>\n    AOAIKeyTokensUnread $bad\n</Location>\n");
    ok(!$ok && $out =~ /AOAIKeyTokensUnread: '\Q$bad\E' is not a number of tokens/,
       "AOAIKeyTokensUnread $bad: apachectl -t fails naming it");
}
my ($ok, $out) = configtest("AOAIKeyTokensUnread 100\n<Location /x>\n    AOAIKeyTokensUnread 9000\n</Location>\n");
ok($ok, 'AOAIKeyTokensUnread in the server and a <Location>') or diag $out;

$gw->stop;      # with AOAI_SANITIZE, a test that it left no report
unlike($gw->error_log, qr/AH\d+:.*(?:crit|alert|emerg)|exit signal/, 'no crash in the error log');
done_testing();
