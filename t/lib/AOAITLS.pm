package AOAITLS;

# A throwaway certificate authority for the HTTPS tests, made with openssl
# at test time in a temporary directory (no private key is ever committed):
#
#   my $ca = AOAITLS->new;
#   my ($cert, $key) = $ca->issue('farm1.openai.test');
#   $ca->issue('old.openai.test', expired => 1);
#   $ca->issue('x.openai.test', name => 'other.openai.test');  # wrong name
#   $ca->self_signed('rogue.openai.test');                    # unknown CA
#   $ca->file                                                  # CA certificate

use strict;
use warnings;
use File::Temp qw(tempdir);

my @KEY = ('-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes');

sub run {
    my (@cmd) = @_;
    my $out = `@cmd 2>&1`;
    die "failed: @cmd\n$out" if $?;
    return $out;
}

sub new {
    my ($class) = @_;
    my $dir = tempdir('aoai-ca-XXXXXX', TMPDIR => 1, CLEANUP => !$ENV{AOAI_KEEP});
    chmod 0755, $dir;
    run('openssl', 'req', '-x509', @KEY, '-keyout', "$dir/ca.key",
        '-out', "$dir/ca.crt", '-days', '2', '-subj', "'/CN=aoai test CA'");
    open my $fh, '>', "$dir/ca.cnf" or die;
    print $fh <<"EOF";
[ca]
default_ca = test
[test]
database = $dir/index.txt
new_certs_dir = $dir
serial = $dir/serial
default_md = sha256
policy = any
copy_extensions = copy
unique_subject = no
[any]
commonName = supplied
EOF
    close $fh;
    open $fh, '>', "$dir/index.txt" or die;
    close $fh;
    open $fh, '>', "$dir/serial" or die;
    print $fh "1000\n";
    close $fh;
    return bless { dir => $dir }, $class;
}

sub file { "$_[0]{dir}/ca.crt" }

# A certificate for $host (or, with name =>, for another name), signed by
# this CA; with expired => 1, valid only for a day in 2020.
sub issue {
    my ($self, $host, %o) = @_;
    my $dir = $self->{dir};
    my $name = $o{name} || $host;
    my $base = "$dir/$host" . ($o{expired} ? '-expired' : '');
    run('openssl', 'req', '-new', @KEY, '-keyout', "$base.key", '-out', "$base.csr",
        '-subj', "/CN=$name", '-addext', "subjectAltName=DNS:$name");
    run('openssl', 'ca', '-batch', '-notext', '-config', "$dir/ca.cnf",
        '-cert', "$dir/ca.crt", '-keyfile', "$dir/ca.key", '-in', "$base.csr",
        '-out', "$base.crt",
        ($o{expired} ? ('-startdate', '20200101000000Z', '-enddate', '20200102000000Z')
                     : ('-days', '2')));
    chmod 0644, "$base.key";    # read by the mock's children
    return ("$base.crt", "$base.key");
}

# A certificate for the right name from a CA nobody trusts.
sub self_signed {
    my ($self, $host) = @_;
    my $dir = $self->{dir};
    run('openssl', 'req', '-x509', @KEY, '-keyout', "$dir/$host-self.key",
        '-out', "$dir/$host-self.crt", '-days', '2', '-subj', "/CN=$host",
        '-addext', "subjectAltName=DNS:$host");
    chmod 0644, "$dir/$host-self.key";
    return ("$dir/$host-self.crt", "$dir/$host-self.key");
}

1;
