/// A client credential, `name:payload` (for example `token:Z2FyZmllbGQ=`).
///
/// Split at the first colon without trimming, as Go does; with no colon the auth
/// name is empty and the whole string is the payload.
public struct Credential: Hashable, Sendable, CustomStringConvertible {
    public var name: String
    public var payload: String

    public init(name: String, payload: String) {
        self.name = name
        self.payload = payload
    }

    public init(_ credential: String) {
        if let colon = credential.firstIndex(of: ":") {
            name = String(credential[..<colon])
            payload = String(credential[credential.index(after: colon)...])
        } else {
            name = ""
            payload = credential
        }
    }

    /// The payload is a secret: it never appears in descriptions or logs.
    public var description: String { name.isEmpty ? "<credential>" : "\(name):<redacted>" }
}
