# Unit test of modules/aoai_ratelimit.c, the parser of what a member's 429
# says about its window (retry-after-ms, Retry-After seconds or HTTP-date,
# x-ratelimit-reset-*): t/unit/ratelimit_test.c against the parser alone,
# built without httpd's headers (APR only).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use AOAIUnit;

run_unit_test(name => 'ratelimit_test',
              sources => ['modules/aoai_ratelimit.c'],
              libs => ['-laprutil-1']);
