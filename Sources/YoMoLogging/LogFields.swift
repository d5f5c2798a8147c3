public import Logging

/// Metadata keys of the records the SDK writes, named as the Go SDK names them
/// so that mixed Go/Swift deployments can be queried alike.
///
/// Per-frame records (`tid`, `tag`, `data_length`) belong at debug or trace
/// level only: the Go zipper logs every frame at info and halves its throughput.
public enum YoMoLogField {
    /// Which component wrote the record; values in `YoMoLogField.Service`.
    public static let service = "service"
    public static let sfnID = "sfn_id"
    public static let sfnName = "sfn_name"
    public static let sourceID = "source_id"
    public static let zipperAddress = "zipper_addr"
    public static let connectionID = "conn_id"
    public static let connectionName = "conn_name"
    /// The frame's transaction id.
    public static let tid = "tid"
    public static let tag = "tag"
    public static let dataLength = "data_length"
    public static let toID = "to_id"
    public static let toName = "to_name"
    /// Added by `Logger.MetadataProvider.yomoTracing`.
    public static let traceID = "trace_id"
    public static let spanID = "span_id"

    /// Values of the `service` field.
    public enum Service {
        public static let streamFunction: Logger.Metadata.Value = "stream-function"
        public static let source: Logger.Metadata.Value = "source"
        public static let zipper: Logger.Metadata.Value = "zipper"
    }

    /// Per-frame fields, for debug/trace records. `dataLength` stays a number in JSON.
    public static func frame(tid: String, tag: UInt32, dataLength: Int) -> Logger.Metadata {
        [
            Self.tid: .string(tid),
            Self.tag: .stringConvertible(tag),
            Self.dataLength: .stringConvertible(dataLength),
        ]
    }
}

extension Logger {
    /// This logger with the fields of a stream function (`service`, `sfn_name`,
    /// `sfn_id`, `zipper_addr`) set as logger metadata, encoded once, not per record.
    public func yomoStreamFunction(name: String, id: String? = nil, zipperAddress: String? = nil) -> Logger {
        var logger = self
        logger[metadataKey: YoMoLogField.service] = YoMoLogField.Service.streamFunction
        logger[metadataKey: YoMoLogField.sfnName] = .string(name)
        if let id { logger[metadataKey: YoMoLogField.sfnID] = .string(id) }
        if let zipperAddress { logger[metadataKey: YoMoLogField.zipperAddress] = .string(zipperAddress) }
        return logger
    }

    /// This logger with the fields of a source (`service`, `source_id`, `zipper_addr`).
    public func yomoSource(id: String, zipperAddress: String? = nil) -> Logger {
        var logger = self
        logger[metadataKey: YoMoLogField.service] = YoMoLogField.Service.source
        logger[metadataKey: YoMoLogField.sourceID] = .string(id)
        if let zipperAddress { logger[metadataKey: YoMoLogField.zipperAddress] = .string(zipperAddress) }
        return logger
    }

    /// This logger with the fields of a zipper (`service`, `zipper_addr`).
    public func yomoZipper(address: String) -> Logger {
        var logger = self
        logger[metadataKey: YoMoLogField.service] = YoMoLogField.Service.zipper
        logger[metadataKey: YoMoLogField.zipperAddress] = .string(address)
        return logger
    }
}
