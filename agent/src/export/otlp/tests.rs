use super::*;
use crate::export::test_records;

#[test]
fn spans_carry_the_record_times_kind_and_genai_attributes() {
    let ids = RandomIdGenerator::default();
    for record in test_records() {
        let data = span(&record, &ids);
        let start = data
            .start_time
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos());
        assert_eq!(start.ok(), Some(u128::from(record.time_unix_nano)));
        let length = data
            .end_time
            .duration_since(data.start_time)
            .map(|d| d.as_secs_f64());
        assert!((length.unwrap_or(-1.0) - record.duration_s).abs() < 1e-6);
        let expected_kind = match record.side {
            Side::Client => SpanKind::Client,
            Side::Server => SpanKind::Server,
        };
        assert_eq!(data.span_kind, expected_kind);
        assert!(data.name.starts_with(record.call.api.operation()));
        let find = |key: &str| {
            data.attributes
                .iter()
                .find(|kv| kv.key.as_str() == key)
                .map(|kv| kv.value.to_string())
        };
        assert_eq!(
            find("gen_ai.system").as_deref(),
            Some(record.call.provider.as_str())
        );
        assert_eq!(
            find("gen_ai.usage.input_tokens"),
            record.call.usage.input_tokens.map(|t| t.to_string())
        );
        assert!(!find("url.path").unwrap_or_default().contains('?'));
        assert_eq!(
            matches!(data.status, Status::Error { .. }),
            error_type(&record).is_some()
        );
    }
}

#[test]
fn start_outside_a_runtime_is_an_error() {
    let options = OtlpOptions::new("http://127.0.0.1:1", OtlpProtocol::Grpc);
    assert!(matches!(
        OtlpExporter::start(&options),
        Err(ExportError::NoRuntime)
    ));
}
