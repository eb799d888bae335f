mod receiver_http;
