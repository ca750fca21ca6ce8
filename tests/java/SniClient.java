import javax.net.ssl.*;
import java.security.cert.X509Certificate;
import java.util.List;

/** Calls a local TLS server naming `sni` in the ClientHello (Java's TLS is not OpenSSL). */
public class SniClient {
    public static void main(String[] args) throws Exception {
        String sni = args[0];
        int port = Integer.parseInt(args[1]);
        TrustManager[] trustAll = { new X509TrustManager() {
            public void checkClientTrusted(X509Certificate[] c, String a) {}
            public void checkServerTrusted(X509Certificate[] c, String a) {}
            public X509Certificate[] getAcceptedIssuers() { return new X509Certificate[0]; }
        }};
        SSLContext ctx = SSLContext.getInstance("TLS");
        ctx.init(null, trustAll, null);
        try (SSLSocket s = (SSLSocket) ctx.getSocketFactory().createSocket("127.0.0.1", port)) {
            SSLParameters p = s.getSSLParameters();
            p.setServerNames(List.of(new SNIHostName(sni)));
            s.setSSLParameters(p);
            String body = "{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
            String req = "POST /v1/chat/completions HTTP/1.1\r\nHost: " + sni
                + "\r\nContent-Type: application/json\r\nContent-Length: " + body.length()
                + "\r\nConnection: close\r\n\r\n" + body;
            s.getOutputStream().write(req.getBytes("UTF-8"));
            s.getOutputStream().flush();
            System.out.println(s.getInputStream().readAllBytes().length);
        }
    }
}
