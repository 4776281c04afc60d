# Issue 4 and 6: modules/aoai_usage.c reads an answer's token usage from a
# JSON body or an SSE stream, whatever bytes a member sends and however the
# answer is cut into brigades (t/unit/usage_test.c, jansson and APR only).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use AOAIUnit;

run_unit_test(name => 'usage_test',
              sources => ['modules/aoai_usage.c', 'modules/aoai_json.c'],
              libs => ['-ljansson']);
