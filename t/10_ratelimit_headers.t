# Unit test of modules/aoai_ratelimit_headers.c, the parser of what a
# member's 429 says about its window (retry-after-ms, Retry-After seconds or
# HTTP-date, x-ratelimit-reset-*): t/unit/ratelimit_headers_test.c against
# the parser alone (APR only, no httpd).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use AOAIUnit;

run_unit_test(name => 'ratelimit_headers_test',
              sources => ['modules/aoai_ratelimit_headers.c'],
              libs => ['-laprutil-1']);
