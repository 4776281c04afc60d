/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * A call's state, kept in the request's own config vector, and the attempt
 * each thread is running.
 *
 * Why a thread-local and not mod_proxy's create_req hook: the filters on a
 * member's connection need the attempt from the request's first write
 * (where mod_ssl runs the handshake, and where the request is seen to
 * reach the member), and mod_proxy_http runs create_req only when it reads
 * the answer (ap_proxy_http_process_response), after the request went
 * out.  Every 2.4 MPM runs a handler's scheme handler, from connecting to
 * the last byte of the answer, in one thread; the link is set around
 * exactly that call and cleared after it.
 */

#include "aoai_request.h"

#include "http_config.h"

static _Thread_local aoai_call *attempt_in_this_thread;

aoai_call *aoai_request_call(request_rec *r)
{
    return ap_get_module_config(r->request_config, &aoai_balancer_module);
}

aoai_call *aoai_request_start(request_rec *r, proxy_balancer *balancer,
                              const aoai_dir_conf *conf)
{
    aoai_call *call = apr_pcalloc(r->pool, sizeof(*call));

    call->r = r;
    call->balancer = balancer;
    call->conf = conf;
    call->picks.tried = apr_array_make(r->pool, 4, sizeof(proxy_worker *));
    call->picks.skipped_throttled = apr_array_make(r->pool, 4,
                                                   sizeof(proxy_worker *));
    ap_set_module_config(r->request_config, &aoai_balancer_module, call);
    return call;
}

void aoai_request_attempt_begin(aoai_call *call)
{
    call->attempt.running = 1;
    attempt_in_this_thread = call;
}

void aoai_request_attempt_end(aoai_call *call)
{
    call->attempt.running = 0;
    attempt_in_this_thread = NULL;
}

aoai_call *aoai_request_attempt_here(void)
{
    return attempt_in_this_thread;
}
