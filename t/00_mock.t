# The mock Azure OpenAI member itself (t/mock/mod_aoai_mock.c), against a
# real httpd running it, so that the gateway's tests can trust it to be
# the service as it is today:
#   - deployments per member (404 DeploymentNotFound), how names and the
#     "deployments" segment are matched;
#   - the GA v1 API: the deployment in the body's model, 400 without one,
#     the model list, last_model;
#   - objects kept per member with ids of the member's own: responses (and
#     their chains), files, batches, assistants, threads, messages, runs,
#     vector stores, fine-tuning jobs; 404/400 shapes for another
#     member's ids, in paths and in bodies; the object cap;
#   - Responses answers and their stream events;
#   - content filter, context length, 403;
#   - rate limits: windows from the first call or on the wall clock with a
#     phase, admission on an estimate, limit headers, the oddities,
#     provisioned utilization;
#   - token accounting: completion size, long streams, gzip, logprobs
#     answers of several MB with the usage at the end;
#   - settings: AOAIMockSet and /mock/control check their values alike;
#   - the openai SDK parses all this (when t/sdk is installed).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use File::Temp qw(tempdir);
use HTTP::Tiny;
use IO::Uncompress::Gunzip qw(gunzip);
use JSON::PP;
use Time::HiRes qw(time sleep);
use AOAITest;

my $mock = start_mock(members => [
    { name => 'east', deployments => [qw(gpt-4o Ada-002)], compress => 'off' },
    { name => 'west' },
    { name => 'lab', set => { completion_tokens => 16, window_mode => 'first_call' } },
]);
my $JSON = JSON::PP->new->canonical;
my $http = HTTP::Tiny->new(timeout => 20, keep_alive => 0);

# call(member, METHOD, path, body (ref: JSON, else raw), headers) ->
# { status, headers, content, json }
sub call {
    my ($member, $method, $path, $body, %headers) = @_;
    my $res = $http->request($method, $mock->member_url($member) . $path, {
        headers => { 'content-type' => 'application/json', %headers },
        (defined $body ? (content => ref $body ? $JSON->encode($body) : $body) : ()),
    });
    $res->{json} = eval { $JSON->decode($res->{content}) };
    return $res;
}
sub chat_call {
    my ($member, $deployment, %extra) = @_;
    return call($member, 'POST', "/openai/deployments/$deployment/chat/completions"
                . "?api-version=2024-06-01", { messages => [ { role => 'user',
                content => delete $extra{content} // 'Hello there' } ], %extra });
}
sub control { $mock->control(@_) }
sub stats { $mock->stats($_[0]) }
sub err { $_[0]{json} && $_[0]{json}{error} || {} }
# the mock counts a prompt as a quarter of the body's bytes, plus one
sub prompt_tokens { int(length($JSON->encode($_[0])) / 4) + 1 }

my $not_found_message = 'The API deployment for this resource does not exist. If you '
    . 'created the deployment within the last 5 minutes, please wait a moment and try again.';

# ---------------------------------------------------------------------
# Deployments
my $res = chat_call('east', 'nope');
is($res->{status}, 404, 'a deployment the member lacks: 404');
is_deeply($res->{json}, { error => { code => 'DeploymentNotFound', message => $not_found_message } },
          '  in Azure\'s shape, word for word');
is(chat_call('east', 'gpt-4o')->{status}, 200, 'a deployment it has: 200');
is(chat_call('east', 'GPT-4O')->{status}, 200,
   'names match case-insensitively, as Azure Resource Manager names do');
control('east', { deployment_case => 'sensitive' });
is(chat_call('east', 'GPT-4O')->{status}, 404, '  deployment_case sensitive: the other reading');
control('east', { deployment_case => 'insensitive' });
is(chat_call('west', 'anything-at-all')->{status}, 200, 'a member without a list serves every name');

$res = call('east', 'POST', '/openai/Deployments/gpt-4o/chat/completions?api-version=2024-06-01',
            { messages => [ { role => 'user', content => 'x' } ] });
is($res->{status}, 404, 'the "deployments" segment is matched exactly by default');
is(err($res)->{code}, '404', '  "Resource not found", as for any unknown path');
control('east', { path_case => 'insensitive' });
$res = call('east', 'POST', '/openai/Deployments/gpt-4o/chat/completions?api-version=2024-06-01',
            { messages => [ { role => 'user', content => 'x' } ] });
is($res->{status}, 200, '  path_case insensitive takes /openai/Deployments/ too');
control('east', { path_case => 'sensitive' });

control('west', { deployments => ['only-this'] });
is(chat_call('west', 'gpt-4o')->{status}, 404, 'deployments set by control: others get 404');
is(chat_call('west', 'only-this')->{status}, 200, '  and the named one is served');
is_deeply(stats('west')->{settings}{deployments}, ['only-this'], '  stats show the list');
control('west', { deployments => undef });
is(chat_call('west', 'gpt-4o')->{status}, 200, '  null: every name again');
is(stats('west')->{settings}{deployments}, undef, '  and stats say so');

# ---------------------------------------------------------------------
# The GA v1 API
$res = call('east', 'POST', '/openai/v1/chat/completions',
            { messages => [ { role => 'user', content => 'hi' } ] });
is($res->{status}, 400, 'v1 without "model": 400');
is_deeply(err($res), { message => "Missing required parameter: 'model'.",
                       type => 'invalid_request_error', param => 'model',
                       code => 'missing_required_parameter' }, '  naming the parameter');
$res = call('east', 'POST', '/openai/v1/chat/completions',
            { model => 'Ada-002', messages => [ { role => 'user', content => 'hi' } ] });
is($res->{status}, 200, 'v1 chat with the deployment in the body, no api-version: 200');
is($res->{json}{object}, 'chat.completion', '  a chat.completion');
is($res->{json}{model}, 'Ada-002', '  for that deployment');
is(stats('east')->{last_model}, 'Ada-002', '  stats: last_model');
$res = call('east', 'POST', '/openai/v1/chat/completions?api-version=preview',
            { model => 'gpt-5', messages => [ { role => 'user', content => 'hi' } ] });
is($res->{status}, 404, 'v1 for a deployment the member lacks: 404');
is(err($res)->{code}, 'DeploymentNotFound', '  DeploymentNotFound');
is(stats('east')->{last_model}, 'gpt-5', '  last_model is what came, served or not');
$res = call('east', 'POST', '/openai/v1/embeddings', { model => 'gpt-4o', input => 'x' });
is($res->{json}{object}, 'list', 'v1 embeddings');
$res = call('east', 'GET', '/openai/v1/models');
is_deeply([ map { $_->{id} } @{ $res->{json}{data} } ], [qw(gpt-4o Ada-002)],
          'GET /openai/v1/models lists the member\'s deployments');
is_deeply(call('west', 'GET', '/openai/v1/models')->{json}{data}, [],
          '  none for a member that declares none');
is(call('east', 'GET', '/openai/v1/nothing-here')->{status}, 404, 'an unknown v1 path: 404');

# ---------------------------------------------------------------------
# Objects live in the member that made them
sub multipart {
    my (%field) = @_;
    my $boundary = 'mock-boundary-' . int(rand(1e9));
    my $body = '';
    for my $name (sort keys %field) {
        $body .= "--$boundary\r\nContent-Disposition: form-data; name=\"$name\""
               . ($name eq 'file' ? "; filename=\"input.jsonl\"\r\nContent-Type: "
                                    . "application/octet-stream" : '')
               . "\r\n\r\n$field{$name}\r\n";
    }
    return ("$body--$boundary--\r\n", 'content-type' => "multipart/form-data; boundary=$boundary");
}
sub upload {
    my ($member, $content, $path) = @_;
    my ($body, %headers) = multipart(purpose => 'batch', file => $content);
    return call($member, 'POST', $path || '/openai/files?api-version=2024-10-21', $body, %headers);
}

my $lines = qq({"custom_id":"1","method":"POST","url":"/chat/completions"}\n);
$res = upload('east', $lines);
is($res->{status}, 200, 'a file uploaded (multipart) to /openai/files');
my $file = $res->{json};
like($file->{id}, qr/^file-/, '  with a file- id');
is($file->{bytes}, length $lines, '  its size');
is($file->{purpose}, 'batch', '  its purpose');
my $v1_file = upload('east', "v1\n", '/openai/v1/files')->{json};
like($v1_file->{id}, qr/^file-/, 'also through /openai/v1/files');
my $west_file = upload('west', $lines)->{json};
isnt(substr($west_file->{id}, 0, 13), substr($file->{id}, 0, 13),
     'ids carry a part of the member\'s own');
is(call('east', 'GET', "/openai/v1/files/$file->{id}/content")->{content}, $lines,
   'GET /files/{id}/content: the bytes uploaded');
is_deeply([ sort map { $_->{id} } @{ call('east', 'GET', '/openai/files?api-version=2024-10-21')->{json}{data} } ],
          [ sort $file->{id}, $v1_file->{id} ], 'the list holds this member\'s files only');
$res = call('west', 'GET', "/openai/v1/files/$file->{id}");
is($res->{status}, 404, 'another member does not know the file: 404');
is_deeply(err($res), { message => "No such File object: $file->{id}", type => 'invalid_request_error',
                       param => 'id', code => undef }, '  in OpenAI\'s shape');
is(stats('west')->{last_object_ids_seen}[-1], $file->{id},
   '  and its stats name the id it was asked for');
$res = call('east', 'DELETE', "/openai/v1/files/$v1_file->{id}");
is_deeply($res->{json}, { id => $v1_file->{id}, object => 'file', deleted => JSON::PP::true },
          'DELETE a file');
is(call('east', 'GET', "/openai/v1/files/$v1_file->{id}")->{status}, 404, '  then it is gone');
my ($mp_body) = multipart(file => 'x');
$res = call('east', 'POST', '/openai/v1/files', $mp_body,
            'content-type' => 'multipart/form-data; boundary=nothing');
is(err($res)->{param}, 'purpose', 'an upload without a purpose: 400 naming it');

# batches
my $batch_body = { input_file_id => $file->{id}, endpoint => '/chat/completions',
                   completion_window => '24h' };
$res = call('east', 'POST', '/openai/batches?api-version=2024-10-21', $batch_body);
is($res->{status}, 200, 'a batch on the member\'s own file');
my $batch = $res->{json};
like($batch->{id}, qr/^batch_/, '  batch_ id');
is($batch->{status}, 'validating', '  validating');
$res = call('west', 'POST', '/openai/v1/batches', $batch_body);
is($res->{status}, 404, 'a batch at another member on that file: 404');
is(err($res)->{message}, "Files [$file->{id}] were not found", '  "Files [...] were not found"');
control('west', { file_not_found_form => 'ownership' });
like(err(call('west', 'POST', '/openai/v1/batches', $batch_body))->{message},
     qr/^Files \[\Q$file->{id}\E\] were not found due to ownership verification failure/,
     '  or, as reported, the ownership wording');
control('west', { file_not_found_form => 'plain' });
is(call('west', 'GET', "/openai/v1/batches/$batch->{id}")->{status}, 404, 'the batch is east\'s only');
is(call('east', 'POST', "/openai/v1/batches/$batch->{id}/cancel")->{json}{status}, 'cancelling',
   'cancel: cancelling');
is(call('east', 'GET', "/openai/batches/$batch->{id}?api-version=2024-10-21")->{json}{status},
   'cancelled', '  then cancelled');
is(call('east', 'GET', '/openai/v1/batches')->{json}{data}[0]{id}, $batch->{id}, 'batches listed');
is(call('east', 'POST', '/openai/v1/batches', { endpoint => '/chat/completions',
                                                completion_window => '24h' })->{json}{error}{param},
   'input_file_id', 'a batch without input_file_id: 400 naming it');

# responses
my $input = { model => 'gpt-4o', input => 'Tell me a story.' };
$res = call('east', 'POST', '/openai/responses?api-version=2025-04-01-preview', $input);
is($res->{status}, 200, 'a response (classic form, model in the body)');
my $response = $res->{json};
is($response->{object}, 'response', '  object: response');
like($response->{id}, qr/^resp_/, '  resp_ id');
is($response->{output}[0]{content}[0]{text}, 'Hello from east', '  its output text');
is($response->{usage}{input_tokens}, prompt_tokens($input), '  input_tokens: the prompt');
is($response->{usage}{output_tokens}, 16, '  output_tokens: the completion size');
is($response->{usage}{total_tokens}, prompt_tokens($input) + 16, '  total_tokens: both');
is(call('east', 'GET', "/openai/v1/responses/$response->{id}")->{json}{id}, $response->{id},
   'GET /responses/{id} at its member');
$res = call('west', 'GET', "/openai/v1/responses/$response->{id}");
is($res->{status}, 404, 'at another: 404');
is(err($res)->{message}, "Response with id '$response->{id}' not found.", '  "not found"');
my $chained = { model => 'gpt-4o', input => 'And then?', previous_response_id => $response->{id} };
$res = call('west', 'POST', '/openai/v1/responses', $chained);
is($res->{status}, 400, 'previous_response_id of another member: 400');
is_deeply($res->{json}, { error => {
    message => "Previous response with id '$response->{id}' not found.",
    type => 'invalid_request_error', param => 'previous_response_id',
    code => 'previous_response_not_found' } }, '  previous_response_not_found, word for word');
$res = call('east', 'POST', '/openai/v1/responses', $chained);
is($res->{status}, 200, 'the chain at its member');
is($res->{json}{usage}{input_tokens}, prompt_tokens($chained) + $response->{usage}{total_tokens},
   '  the previous response counts as input');
$res = call('east', 'POST', '/openai/v1/responses', { %$input, store => JSON::PP::false });
is(call('east', 'GET', "/openai/v1/responses/$res->{json}{id}")->{status}, 404,
   '"store": false: not kept');
is(call('east', 'DELETE', "/openai/v1/responses/$response->{id}")->{json}{deleted}, JSON::PP::true,
   'DELETE a response');
is(call('east', 'GET', "/openai/v1/responses/$response->{id}")->{status}, 404, '  then it is gone');
is(call('west', 'POST', '/openai/v1/responses', { model => 'nope' })->{status}, 200,
   'a member without a list takes any model for a response');
is(err(call('east', 'POST', '/openai/v1/responses', { model => 'nope' }))->{code},
   'DeploymentNotFound', '  one with a list: DeploymentNotFound');
is(err(call('east', 'POST', '/openai/v1/responses', { input => 'x' }))->{param}, 'model',
   '  no model: 400 naming it');

# vector stores, assistants, threads, runs
$res = call('east', 'POST', '/openai/vector_stores?api-version=2024-10-21',
            { name => 'docs', file_ids => [ $file->{id} ] });
my $store = $res->{json};
like($store->{id}, qr/^vs_/, 'a vector store on the member\'s file: vs_ id');
is($store->{file_counts}{completed}, 1, '  with the file in it');
is(call('west', 'POST', '/openai/v1/vector_stores', { file_ids => [ $file->{id} ] })->{status}, 404,
   '  another member cannot use the file');
my $second = upload('east', "second\n")->{json};
$res = call('east', 'POST', "/openai/v1/vector_stores/$store->{id}/files", { file_id => $second->{id} });
is($res->{json}{object}, 'vector_store.file', 'a file added to the store');
is(scalar @{ call('east', 'GET', "/openai/v1/vector_stores/$store->{id}/files")->{json}{data} }, 2,
   '  both listed');
is(call('east', 'DELETE', "/openai/v1/vector_stores/$store->{id}/files/$second->{id}")->{json}{deleted},
   JSON::PP::true, '  one removed');
is(call('east', 'GET', "/openai/v1/vector_stores/$store->{id}")->{json}{file_counts}{total}, 1,
   '  the store counts one');

my $assistant_body = { model => 'gpt-4o', tools => [ { type => 'file_search' } ],
                       tool_resources => { file_search => { vector_store_ids => [ $store->{id} ] } } };
$res = call('east', 'POST', '/openai/assistants?api-version=2024-10-21', $assistant_body);
my $assistant = $res->{json};
like($assistant->{id}, qr/^asst_/, 'an assistant on the member\'s vector store: asst_ id');
$res = call('west', 'POST', '/openai/v1/assistants', $assistant_body);
is($res->{status}, 404, '  at another member: 404');
is(err($res)->{message}, "No vector store found with id '$store->{id}'.", '  no such vector store');
$res = call('east', 'POST', '/openai/v1/threads', { messages => [ { role => 'user', content => 'Hi',
    attachments => [ { file_id => $file->{id}, tools => [ { type => 'file_search' } ] } ] } ] });
my $thread = $res->{json};
like($thread->{id}, qr/^thread_/, 'a thread with a message and an attachment: thread_ id');
is(call('west', 'POST', '/openai/v1/threads', { messages => [ { role => 'user', content => 'Hi',
    attachments => [ { file_id => $file->{id} } ] } ] })->{status}, 404,
   '  the attachment is east\'s: west answers 404');
$res = call('east', 'POST', "/openai/v1/threads/$thread->{id}/messages", { role => 'user', content => 'More' });
like($res->{json}{id}, qr/^msg_/, 'a message added: msg_ id');
is(call('east', 'POST', "/openai/v1/threads/$thread->{id}/messages", { content => 'x' })->{json}{error}{param},
   'role', '  one without a role: 400');
$res = call('east', 'POST', "/openai/v1/threads/$thread->{id}/runs", { assistant_id => $assistant->{id} });
my $run = $res->{json};
like($run->{id}, qr/^run_/, 'a run: run_ id');
is($run->{status}, 'queued', '  queued');
$res = call('east', 'GET', "/openai/v1/threads/$thread->{id}/runs/$run->{id}");
is($res->{json}{status}, 'completed', 'GET the run: completed');
is($res->{json}{usage}{completion_tokens}, 16, '  with usage');
my $messages = call('east', 'GET', "/openai/threads/$thread->{id}/messages?api-version=2024-10-21")->{json}{data};
is(scalar @$messages, 3, 'the thread holds both messages and the answer');
is($messages->[0]{content}[0]{text}{value}, 'Hello from east', '  the answer first (newest first)');
is($messages->[0]{run_id}, $run->{id}, '  made by the run');
is(call('west', 'GET', "/openai/v1/threads/$thread->{id}/runs/$run->{id}")->{status}, 404,
   'the run at another member: 404');
$res = call('west', 'POST', "/openai/v1/threads/$thread->{id}/runs", { assistant_id => $assistant->{id} });
is(err($res)->{message}, "No assistant found with id '$assistant->{id}'.",
   'a run at another member names the assistant it lacks');
is(call('east', 'DELETE', "/openai/v1/threads/$thread->{id}")->{json}{object}, 'thread.deleted',
   'DELETE the thread');
is(call('east', 'GET', "/openai/v1/threads/$thread->{id}/messages")->{status}, 404, '  its messages with it');

# fine-tuning
is(call('west', 'POST', '/openai/v1/fine_tuning/jobs', { model => 'gpt-4o', training_file => $file->{id} })
   ->{status}, 404, 'a fine-tuning job on another member\'s file: 404');
like(call('east', 'POST', '/openai/v1/fine_tuning/jobs', { model => 'gpt-4o', training_file => $file->{id} })
     ->{json}{id}, qr/^ftjob-/, '  on the member\'s own: ftjob- id');

my $east = stats('east');
is($east->{objects}{file}, 2, 'stats: files per member (one deleted)');
is($east->{objects}{assistant}, 1, '  assistants');
is($east->{objects}{thread}, 0, '  threads (one deleted)');
is($east->{objects}{message}, 0, '  messages (with it)');
is($east->{objects}{vector_store}, 1, '  vector stores');
is($east->{objects}{batch}, 1, '  batches');
is($east->{objects}{response}, 1, '  responses (one deleted, one not stored)');
is(stats('west')->{objects}{response}, 1, '  west\'s own');

# the cap
control('lab', { object_cap => 3 });
my @lab_files = map { upload('lab', "f$_\n")->{json}{id} } 1 .. 5;
my $lab = stats('lab');
is($lab->{object_count}, 3, 'object_cap 3: three objects kept');
is($lab->{objects_evicted}, 2, '  the two oldest evicted');
is(call('lab', 'GET', "/openai/v1/files/$lab_files[0]")->{status}, 404, '  the first is gone');
is(call('lab', 'GET', "/openai/v1/files/$lab_files[4]")->{status}, 200, '  the last is there');
$mock->reset('lab');
is(stats('lab')->{object_count}, 0, '/mock/reset drops the objects');

# ---------------------------------------------------------------------
# The Responses stream
control('lab', { stream_chunks => 4, stream_delay_ms => 0 });
$res = call('lab', 'POST', '/openai/v1/responses', { model => 'm', input => 'hi', stream => JSON::PP::true });
like($res->{headers}{'content-type'}, qr{^text/event-stream}, 'a streamed response: text/event-stream');
my @events = map { /^event: (\S+)\ndata: (.*)\z/s ? [ $1, $JSON->decode($2) ] : [ '?', {} ] }
             grep { length } split /\n\n/, $res->{content};
my @names = map { $_->[0] } @events;
is($names[0], 'response.created', '  response.created first');
is($names[1], 'response.in_progress', '  then response.in_progress');
is(scalar(grep { $_ eq 'response.output_text.delta' } @names), 4, '  a delta per chunk');
ok((grep { $_ eq 'response.output_text.done' } @names), '  response.output_text.done');
is($names[-1], 'response.completed', '  response.completed last');
is_deeply([ map { $_->[1]{type} } @events ], \@names, '  each data line\'s type is its event line');
is_deeply([ map { $_->[1]{sequence_number} } @events ], [ 0 .. $#events ], '  numbered in order');
my $completed = $events[-1][1]{response};
is($completed->{usage}{output_tokens}, 16, '  the completed response carries usage');
is($completed->{output}[0]{content}[0]{text},
   join('', map { $_->[1]{delta} } grep { $_->[0] eq 'response.output_text.delta' } @events),
   '  and the text the deltas made');
is(call('lab', 'GET', "/openai/v1/responses/$completed->{id}")->{json}{status}, 'completed',
   '  it is kept');

# ---------------------------------------------------------------------
# Errors a gateway must tell apart
control('lab', { filter_word => 'FILTERME' });
$res = chat_call('lab', 'd', content => 'please FILTERME now');
is($res->{status}, 400, 'a prompt with the filter word: 400');
my $error = err($res);
is($error->{code}, 'content_filter', '  code content_filter');
is($error->{param}, 'prompt', '  param prompt');
is($error->{status}, 400, '  status 400 in the body');
is($error->{innererror}{code}, 'ResponsibleAIPolicyViolation', '  innererror ResponsibleAIPolicyViolation');
is_deeply([ sort keys %{ $error->{innererror}{content_filter_result} } ],
          [qw(hate jailbreak self_harm sexual violence)], '  with content_filter_result per category');
is($error->{innererror}{content_filter_result}{violence}{filtered}, JSON::PP::true, '  one filtered');
is(call('lab', 'POST', '/openai/v1/responses', { model => 'm', input => 'FILTERME' })->{json}{error}{code},
   'content_filter', '  the Responses API too');
is(chat_call('lab', 'd')->{status}, 200, '  a clean prompt: 200');
control('lab', { filter_word => undef });
is(chat_call('lab', 'd', content => 'FILTERME')->{status}, 200, '  filter_word null: off');

control('lab', { context_tokens => 40 });
is(chat_call('lab', 'd')->{status}, 200, 'a prompt inside the context: 200');
my $long = { messages => [ { role => 'user', content => 'x' x 400 } ] };
$res = chat_call('lab', 'd', content => 'x' x 400);
is($res->{status}, 400, 'a prompt past context_tokens: 400');
is(err($res)->{code}, 'context_length_exceeded', '  context_length_exceeded');
is(err($res)->{param}, 'messages', '  param messages');
like(err($res)->{message}, qr/maximum context length is 40 tokens/, '  naming the limit');
$res = chat_call('lab', 'd', max_tokens => 100);
is(err($res)->{code}, 'context_length_exceeded', '  prompt + max_tokens past it too');
like(err($res)->{message}, qr/\(\d+ in the messages, 100 in the completion\)/, '  saying so');
is(err(call('lab', 'POST', '/openai/v1/responses', { model => 'm', input => 'x' x 400 }))->{param},
   'input', '  the Responses API: param input');
control('lab', { context_tokens => 0 });

control('lab', { forbidden => JSON::PP::true });
$res = chat_call('lab', 'd');
is($res->{status}, 403, 'forbidden: 403');
is(err($res)->{code}, 'PermissionDenied', '  PermissionDenied');
is(call('lab', 'GET', '/openai/v1/files')->{status}, 403, '  on every API');
control('lab', { forbidden => JSON::PP::false });
control('lab', { api_key => 'right' });
is(chat_call('lab', 'd')->{status}, 401, 'the 401 of before still holds');
control('lab', { api_key => undef });

# ---------------------------------------------------------------------
# Rate limits
$mock->reset('lab');
control('lab', { quota_requests => 2, quota_window_ms => 1500 });
my $t0 = time;
my @h = map { chat_call('lab', 'd')->{headers} } 1 .. 2;
is_deeply([ map { $_->{'x-ratelimit-remaining-requests'} } @h ], [ 1, 0 ],
          'first_call windows: remaining requests count down');
ok(!defined $h[0]{'x-ratelimit-limit-requests'}, '  no limit headers by default');
$res = chat_call('lab', 'd');
is($res->{status}, 429, '  the third call: 429');
my $window = stats('lab')->{window};
is($window->{mode}, 'first_call', '  the window mode in stats');
cmp_ok(abs($window->{start_ms} - $t0 * 1000), '<', 300, '  the window opened at the first call');
cmp_ok($res->{headers}{'retry-after-ms'}, '<=', 1500, '  retry-after-ms within the window');
sleep(($res->{headers}{'retry-after-ms'} + 20) / 1000);
my $t1 = time;
is(chat_call('lab', 'd')->{status}, 200, '  after it: a new window');
my $start = stats('lab')->{window}{start_ms};
cmp_ok(abs($start - $t1 * 1000), '<', 300, '  opened by that call, not on a clock');

for my $phase (250, 700) {
    control('lab', { window_mode => 'wall_clock', window_phase_ms => $phase, quota_window_ms => 1000,
                     quota_requests => 1 });
    # both calls early in one window: 20 ms past a boundary
    sleep(((1000 - (int(time * 1000) - $phase) % 1000) + 20) % 1000 / 1000);
    chat_call('lab', 'd');
    $start = stats('lab')->{window}{start_ms};
    is($start % 1000, $phase, "wall_clock, phase $phase: the window starts at a multiple + $phase");
    cmp_ok(time * 1000 - $start, '<', 1000 + 50, '  the one the call fell in');
    my $sent = time;
    $res = chat_call('lab', 'd');
    is($res->{status}, 429, '  the next call: 429');
    my $boundary = $start + 1000;
    # the mock counts from the call's arrival, a little after $sent
    cmp_ok(abs($sent * 1000 + $res->{headers}{'retry-after-ms'} - $boundary), '<', 150,
           '  retry-after-ms points at the next boundary');
}

$mock->reset('lab');
my $small = { messages => [ { role => 'user', content => 'Hi' } ], max_tokens => 500 };
my $p = int(length($JSON->encode({ %$small })) / 4) + 1;
control('lab', { quota_tokens => 200, quota_window_ms => 60000 });
$res = call('lab', 'POST', '/openai/deployments/d/chat/completions', $small);
is($res->{status}, 200, 'without quota_estimate: admitted on the tokens used');
$mock->reset('lab');
control('lab', { quota_tokens => 200, quota_window_ms => 60000, quota_estimate => JSON::PP::true });
$res = call('lab', 'POST', '/openai/deployments/d/chat/completions', $small);
is($res->{status}, 429, 'quota_estimate: prompt + max_tokens past the quota: 429 at once');
my $fits = { messages => [ { role => 'user', content => 'Hi' } ], max_tokens => 100 };
my $pf = int(length($JSON->encode($fits)) / 4) + 1;
$res = call('lab', 'POST', '/openai/deployments/d/chat/completions', $fits);
is($res->{status}, 200, '  an estimate that fits: 200');
is($res->{headers}{'x-ratelimit-remaining-tokens'}, 200 - ($pf + 16),
   '  charged what it used (prompt + 16), not the estimate');

$mock->reset('lab');
control('lab', { quota_requests => 5, quota_tokens => 5000, quota_window_ms => 30000,
                 limit_headers => JSON::PP::true });
$res = chat_call('lab', 'd');
is($res->{headers}{'x-ratelimit-limit-requests'}, 5, 'limit_headers: x-ratelimit-limit-requests');
is($res->{headers}{'x-ratelimit-limit-tokens'}, 5000, '  x-ratelimit-limit-tokens');
like($res->{headers}{'x-ratelimit-reset-requests'}, qr/^(?:\d+ms|\d+(?:\.\d+)?s)$/,
     '  x-ratelimit-reset-requests as a duration');
like($res->{headers}{'x-ratelimit-reset-tokens'}, qr/^(?:2\d|30)(?:\.\d+)?s$/, '  and -tokens, within the window');

$mock->reset('lab');
control('lab', { quota_requests => 1, quota_tokens => 10000 });
chat_call('lab', 'd');
is(chat_call('lab', 'd')->{headers}{'x-ratelimit-remaining-tokens'}, 0,
   'a 429 says 0 tokens left by default');
control('lab', { odd_429_tokens_left => JSON::PP::true });
$res = chat_call('lab', 'd');
is($res->{status}, 429, 'odd_429_tokens_left: still 429');
cmp_ok($res->{headers}{'x-ratelimit-remaining-tokens'}, '>', 0, '  while tokens are said to be left');

for my $unknown ('-1', '0') {
    $mock->reset('lab');
    control('lab', { quota_requests => 100, remaining_unknown => $unknown });
    $res = chat_call('lab', 'd');
    is($res->{status}, 200, "remaining_unknown $unknown: 200");
    is($res->{headers}{'x-ratelimit-remaining-requests'}, $unknown, '  requests say it');
    is($res->{headers}{'x-ratelimit-remaining-tokens'}, $unknown, '  tokens too');
}

$mock->reset('lab');
control('lab', { quota_requests => 3, quota_window_ms => 1000, remaining_never_reset => JSON::PP::true });
chat_call('lab', 'd');
is(chat_call('lab', 'd')->{headers}{'x-ratelimit-remaining-requests'}, 1, 'remaining_never_reset: 1 left');
sleep 1.1;
$res = chat_call('lab', 'd');
is($res->{status}, 200, '  a new window: served');
is($res->{headers}{'x-ratelimit-remaining-requests'}, 1, '  yet the figure does not go back up');

$mock->reset('lab');
control('lab', { ptu_tokens => 100, quota_window_ms => 2000 });
my $ptu_body = { messages => [ { role => 'user', content => 'Hi' } ], max_tokens => 40 };
my $estimate = int(length($JSON->encode($ptu_body)) / 4) + 1 + 40;
$res = call('lab', 'POST', '/openai/deployments/d/chat/completions', $ptu_body);
is($res->{status}, 200, 'provisioned: 200');
is($res->{headers}{'azure-openai-deployment-utilization'}, sprintf('%.1f%%', $estimate),
   '  azure-openai-deployment-utilization: prompt + max_tokens of the capacity');
ok(!(grep { /^x-ratelimit/ } keys %{ $res->{headers} }), '  no x-ratelimit-* headers');
$res = call('lab', 'POST', '/openai/deployments/d/chat/completions', $ptu_body);
is($res->{status}, 200, '  below 100% the next call is admitted');
is($res->{headers}{'azure-openai-deployment-utilization'}, '100.0%', '  and takes it to 100%');
$res = call('lab', 'POST', '/openai/deployments/d/chat/completions', $ptu_body);
is($res->{status}, 429, '  at 100%: 429');
ok($res->{headers}{'retry-after-ms'} > 0 && $res->{headers}{'retry-after-ms'} <= 2000,
   '  with retry-after-ms');
is($res->{headers}{'retry-after'}, int(($res->{headers}{'retry-after-ms'} + 999) / 1000),
   '  and retry-after in seconds');
ok(!(grep { /^x-ratelimit/ } keys %{ $res->{headers} }), '  and no x-ratelimit-*');
is(err($res)->{code}, '429', '  Azure\'s 429 body');

# ---------------------------------------------------------------------
# Token accounting
$mock->reset('lab');
control('lab', { completion_tokens => 40 });
is(chat_call('lab', 'd')->{json}{usage}{completion_tokens}, 40, 'completion_tokens 40: the usage says 40');
is(chat_call('lab', 'd', max_tokens => 10)->{json}{usage}{completion_tokens}, 10, '  max_tokens lowers it');
is(call('lab', 'POST', '/openai/v1/responses', { model => 'm', input => 'x' })->{json}{usage}{output_tokens},
   40, '  the Responses API too');

control('lab', { stream_chunks => 300, stream_delay_ms => 0 });
for my $include (0, 1) {
    $res = chat_call('lab', 'd', stream => JSON::PP::true,
                     $include ? (stream_options => { include_usage => JSON::PP::true }) : ());
    my @data = map { /^data: (.*)$/ ? $1 : () } split /\n\n/, $res->{content};
    is($data[-1], '[DONE]', "a long stream (include_usage $include) ends in [DONE]");
    my @chunks = map { $JSON->decode($_) } @data[0 .. $#data - 1];
    is(scalar(grep { @{ $_->{choices} } } @chunks), 300, '  300 content chunks');
    my @usage = grep { $_->{usage} } @chunks;
    is(scalar @usage, $include, $include ? '  usage in one chunk' : '  no usage unless asked for');
    is($usage[0]{usage}{completion_tokens}, 300, '  at the end: the chunks streamed') if $include;
}

control('east', { compress => JSON::PP::true });
$res = $http->request('POST', $mock->member_url('east')
                      . '/openai/deployments/gpt-4o/chat/completions?api-version=2024-06-01', {
    headers => { 'content-type' => 'application/json', 'accept-encoding' => 'gzip' },
    content => $JSON->encode({ messages => [ { role => 'user', content => 'Hello there' x 20 } ] }) });
is($res->{headers}{'content-encoding'}, 'gzip', 'compress on, Accept-Encoding: gzip: gzip');
my $plain;
gunzip(\$res->{content} => \$plain);
is(eval { $JSON->decode($plain)->{object} }, 'chat.completion', '  the JSON inside');
$res = chat_call('east', 'gpt-4o');
ok(!$res->{headers}{'content-encoding'}, '  a client that does not ask: plain');
control('east', { compress => JSON::PP::false });
$res = $http->request('GET', $mock->member_url('east') . '/openai/v1/files',
                      { headers => { 'accept-encoding' => 'gzip' } });
ok(!$res->{headers}{'content-encoding'}, 'compress off (the default): plain even when asked');

control('lab', { completion_tokens => 20 });
$res = chat_call('lab', 'd', logprobs => JSON::PP::true, top_logprobs => 3);
my $logprobs = $res->{json}{choices}[0]{logprobs}{content};
is(scalar @$logprobs, 20, 'logprobs: an entry per completion token');
is(scalar @{ $logprobs->[0]{top_logprobs} }, 3, '  top_logprobs alternatives each');
is($res->{json}{choices}[0]{message}{content}, join('', map { $_->{token} } @$logprobs),
   '  the tokens make the content');
is_deeply($logprobs->[2]{bytes}, [ unpack 'C*', $logprobs->[2]{token} ], '  bytes are the token\'s');
control('lab', { completion_tokens => 5000 });
$res = chat_call('lab', 'd', logprobs => JSON::PP::true, top_logprobs => 20);
cmp_ok(length $res->{content}, '>', 4_000_000, 'completion_tokens 5000, top_logprobs 20: an answer of '
       . sprintf('%.1f MB', length($res->{content}) / 1e6));
my $entries = () = $res->{content} =~ /"top_logprobs":\[/g;
is($entries, 5000, '  5000 entries');
like($res->{content}, qr/"usage":\{"prompt_tokens":\d+,"completion_tokens":5000,"total_tokens":\d+\}\}\z/,
     '  the usage at the very end');
is($res->{headers}{'content-length'}, length $res->{content}, '  Content-Length says all of it');

# ---------------------------------------------------------------------
# Settings are checked alike by the directive and by control
$res = AOAITest::post_json($mock->member_url('lab') . '/mock/control',
                           { window_mode => 'bogus', quota_requests => 7 });
is($res->{status}, 400, 'control with a bad value: 400');
like(err($res)->{message}, qr/window_mode: one of first_call\|wall_clock/, '  naming the field and its values');
is(AOAITest::post_json($mock->member_url('lab') . '/mock/control', { nonsense => 1 })->{status}, 200,
   '  unknown fields are ignored, as they always were');
for my $case ([ 'window_mode bogus', qr/window_mode: one of/ ], [ 'object_cap 0', qr/out of range/ ],
              [ 'no_such 1', qr/unknown setting no_such/ ]) {
    my $dir = tempdir('aoai-mock-conf-XXXXXX', TMPDIR => 1, CLEANUP => 1);
    open my $fh, '>', "$dir/httpd.conf" or die;
    print $fh AOAITest::base_conf($dir, ports => [ free_port() ], loglevel => 'warn', mpm => 'single',
        modules => "LoadModule authz_core_module /usr/lib/apache2/modules/mod_authz_core.so\n"
                 . "LoadModule aoai_mock_module $TOP/t/mock/.libs/mod_aoai_mock.so\n"),
        "<VirtualHost 127.0.0.1:1>\n    AOAIMockSet $case->[0]\n</VirtualHost>\n";
    close $fh;
    my $out = `/usr/sbin/apache2 -d $dir -f $dir/httpd.conf -t 2>&1`;
    isnt($?, 0, "AOAIMockSet $case->[0]: apache2 -t fails");
    like($out, $case->[1], '  saying why');
}

# ---------------------------------------------------------------------
# What the openai SDK makes of it
SKIP: {
    skip 'node and t/sdk/node_modules are needed (t/run installs them)', 9
        unless `which node` && -d "$TOP/t/sdk/node_modules/openai";
    $mock->reset('east');
    my %sdk = map { my $r = eval { $JSON->decode($_) }; $r ? ($r->{kind} => $r) : () }
        split /\n/, `node $TOP/t/mock/sdk_check.mjs $TOP/t/sdk/node_modules/openai/index.mjs ${\ $mock->member_url('east')} 2>&1`;
    is($sdk{chat}{content}, 'Hello from east', 'SDK: v1 chat');
    is($sdk{response}{text}, 'Hello from east', 'SDK: a response\'s output_text');
    is($sdk{chained}{previous}, $sdk{response}{id}, 'SDK: a chain through the classic form, retrieved');
    is($sdk{stream}{types}[0], 'response.created', 'SDK: the stream\'s events');
    is($sdk{stream}{types}[-1], 'response.completed', '  to the end');
    ok($sdk{stream}{usage}{total_tokens} > 0, '  with usage');
    like($sdk{batch}{batch} // '', qr/^batch_/, 'SDK: a file uploaded and a batch on it');
    is($sdk{batch}{content}, qq({"custom_id":"1"}\n), '  the file\'s content back');
    is($sdk{missing}{error}, 404, 'SDK: a response never made: 404');
}

done_testing();
