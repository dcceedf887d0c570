//! W3C trace context (`traceparent`) of the current span. Outbox rows store it and publish it
//! as an AMQP header, and participant calls send it as gRPC metadata, so that one trace runs
//! from a client's request through the saga to every event it caused.

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Header and metadata key of the W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// Returns the `traceparent` of the current span, or `None` when the span has no trace, for
/// example when the process installed no OpenTelemetry layer.
pub fn current_traceparent() -> Option<String> {
    let context = tracing::Span::current().context();
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// Makes the trace of `traceparent`, the header a request carried, the parent of `span`. A
/// missing or invalid header leaves `span` the root of a new trace.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    struct Header<'a>(Option<&'a str>);
    impl Extractor for Header<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.filter(|_| key == TRACEPARENT)
        }

        fn keys(&self) -> Vec<&str> {
            vec![TRACEPARENT]
        }
    }
    let parent = TraceContextPropagator::new().extract(&Header(traceparent));
    // An error only means that no OpenTelemetry layer is installed.
    let _ = span.set_parent(parent);
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TracerProvider;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn trace_continues_from_headers() {
        let tracer = SdkTracerProvider::builder().build().tracer("test");
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(tracer));

        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request");
            continue_trace(&span, Some(PARENT));
            let traceparent = span.in_scope(current_traceparent).expect("a trace");

            assert!(
                traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
                "{traceparent}"
            );
            assert!(
                !traceparent.contains("00f067aa0ba902b7"),
                "a span of its own"
            );
        });
    }

    #[test]
    fn no_trace_without_a_layer() {
        assert_eq!(current_traceparent(), None);
    }
}
